"""Erasure of a large user through the real server: other users' writes are not stalled, the
user's own new requests are kept, the erasure finishes in the background, survives a restart,
and statistics and totals agree with the rows throughout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from conftest import ADMIN_TOKEN, fresh_database, start_api

from jotc_api.erasure import pseudonym

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HEAVY = "heavy@example.com"
PLANTED = 500_000
# The old single-transaction erasure held the heavy user's statistics row for the whole delete
# (~0.6 s for 500,000 rows here, 5.9 s for 5,000,000: docs/reliability.md), and every recorder
# batch holding a row of that user, with every other user's row in it, waited as long; a chunk
# holds it for milliseconds. Generous bounds for a noisy, shared 2-core machine.
P99_OTHER_POST_SECONDS = 0.15
WORST_OTHER_POST_SECONDS = 0.4


def plant(url: str, user: str, rows: int, age: str = "1 hour") -> None:
    """``rows`` small valid requests for one user, recorded ``age`` ago and earlier, with their statistics."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at) "
            "SELECT gen_random_uuid(), %s, 7, 2, '\\x00'::bytea, 3, "
            "now() - %s::interval - i * interval '1 millisecond' FROM generate_series(1, %s) AS i",
            (user, age, rows),
        )
        db.execute(
            "INSERT INTO user_stats AS s (user_name, requests, last_request_at) "
            "SELECT user_name, count(*), max(created_at) FROM jump_requests WHERE user_name = %s GROUP BY 1 "
            "ON CONFLICT (user_name) DO UPDATE SET requests = excluded.requests, "
            "last_request_at = excluded.last_request_at",
            (user,),
        )
        db.execute("VACUUM ANALYZE jump_requests")


def agreement(url: str) -> dict[str, Any]:
    """Whether statistics agree with the rows, per user and in total."""
    with psycopg.connect(url) as db:
        mismatched = db.execute(
            "SELECT count(*) FROM (SELECT user_name, count(*) AS n FROM jump_requests GROUP BY 1) r "
            "FULL JOIN user_stats s USING (user_name) WHERE r.n IS DISTINCT FROM s.requests"
        ).fetchone()
        counted = db.execute(
            "SELECT (SELECT count(*) FROM jump_requests), (SELECT count(*) FROM user_stats)"
        ).fetchone()
        totals = db.execute("SELECT sum(requests), sum(users) FROM stats_totals").fetchone()
    assert mismatched is not None
    assert counted is not None
    assert totals is not None
    return {"mismatched": mismatched[0], "counted": tuple(counted), "totals": tuple(totals)}


def test_erasing_a_large_user_does_not_stall_other_writers(tmp_root: Path) -> None:
    with fresh_database() as url:
        plant(url, HEAVY, PLANTED)
        server = start_api(url, tmp_root, JOTC_ACCESS_LOG="false")
        try:
            outcome = asyncio.run(erase_while_posting(server.base_url))
        finally:
            server.stop()
        others = outcome["other_latencies"]
        assert len(others) > 50, "too few posts during the erasure to judge"
        ordered = sorted(others)
        said = (
            f"other users' POSTs during the erasure: p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms, worst {ordered[-1] * 1000:.0f} ms, "
            f"{len(ordered)} posts"
        )
        print(said)
        assert ordered[int(len(ordered) * 0.99)] < P99_OTHER_POST_SECONDS, said
        assert ordered[-1] < WORST_OTHER_POST_SECONDS, said
        assert outcome["failures"] == 0
        # Everything recorded up to the erasure is gone; the heavy user's requests made during it stay.
        with psycopg.connect(url) as db:
            before, after = db.execute(
                "SELECT count(*) FILTER (WHERE r.created_at <= j.cutoff), "
                "count(*) FILTER (WHERE r.created_at > j.cutoff) "
                "FROM jump_requests r JOIN erasure_jobs j ON j.user_name = %s WHERE r.user_name = %s",
                (pseudonym(HEAVY), HEAVY),  # a finished job keeps the name's digest, not the name
            ).fetchone() or (None, None)
        assert before == 0
        assert after is not None
        assert after >= outcome["heavy_posted_once_started"] > 0
        assert outcome["final"]["deleted"] >= PLANTED
        state = agreement(url)
        assert state["mismatched"] == 0
        assert state["totals"] == state["counted"]


async def erase_while_posting(base_url: str) -> dict[str, Any]:
    other_latencies: list[float] = []
    erasing = asyncio.Event()
    stop = asyncio.Event()
    counts = {"failures": 0, "heavy_after": 0}
    started_at = float("inf")  # when the erasure had certainly started: its first answer came

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def poster(number: int) -> None:
            sent = 0
            while not stop.is_set():
                sent += 1
                heavy = sent % 5 == 0
                user = HEAVY if heavy else f"other-{number}-{sent % 50}@example.com"
                started = time.perf_counter()
                response = await http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0], "user": user})
                took = time.perf_counter() - started
                if response.status_code != 201:
                    counts["failures"] += 1
                if heavy and started > started_at:
                    counts["heavy_after"] += 1
                elif not heavy and erasing.is_set():
                    other_latencies.append(took)

        posters = [asyncio.create_task(poster(i)) for i in range(8)]
        await asyncio.sleep(1.0)  # steady state first
        erasing.set()
        first = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
        started_at = time.perf_counter()
        assert first.status_code in (200, 202), first.text
        final: dict[str, Any] = first.json()
        if first.status_code == 202:
            assert first.headers["location"] == final["status_url"]
            again = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
            if again.status_code == 202:  # the same job, not a second one
                assert again.json()["requested_at"] == final["requested_at"]
            deadline = time.monotonic() + 45
            while final.get("state") != "done" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = await http.get(final["status_url"], headers=AUTH)
                assert status.status_code == 200
                final = status.json()
            assert final["state"] == "done", final
        await asyncio.sleep(0.5)  # the heavy user's requests after the erasure are recorded too
        stop.set()
        await asyncio.gather(*posters)
    return {
        "other_latencies": other_latencies,
        "failures": counts["failures"],
        "heavy_posted_once_started": counts["heavy_after"],
        "final": final,
    }


def test_an_erasure_left_running_by_a_restart_is_finished_by_the_next_api(tmp_root: Path) -> None:
    with fresh_database() as url:
        plant(url, HEAVY, 20_000)
        plant(url, "kept@example.com", 10)
        with psycopg.connect(url, autocommit=True) as db:  # as an API killed mid-erasure leaves it
            db.execute(
                "INSERT INTO erasure_jobs (user_name, state, cutoff, deleted, requested_at, updated_at) "
                "VALUES (%s, 'running', now(), 0, now(), now())",
                (HEAVY,),
            )
        server = start_api(url, tmp_root, JOTC_WORKERS="1")
        try:
            deadline = time.monotonic() + 30
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = httpx.get(f"{server.base_url}/admin/erasures/{HEAVY}", headers=AUTH).json()
                if status["state"] == "done":
                    break
                time.sleep(0.2)
            assert (status["state"], status["deleted"]) == ("done", 20_000)
            assert httpx.get(f"{server.base_url}/admin/erasures/nobody", headers=AUTH).status_code == 404
            stats = httpx.get(f"{server.base_url}/admin/stats", headers=AUTH).json()
            assert (stats["total_requests"], stats["total_users"]) == (10, 1)
        finally:
            server.stop()
        state = agreement(url)
        assert state["mismatched"] == 0
        assert state["totals"] == state["counted"] == (10, 1)
