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
import pytest
from jotc_provision import wait_until
from support import ADMIN_TOKEN, agreement, fresh_database, plant, start_api

from jotc_api.erasure import pseudonym

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HEAVY = "heavy@example.com"
PLANTED = 500_000
# The old single-transaction erasure held the heavy user's statistics row for the whole delete
# (~0.6 s for 500,000 rows here, 5.9 s for 5,000,000: docs/reliability.md), and every recorder
# batch holding a row of that user, with every other user's row in it, waited as long; a chunk
# holds it for milliseconds. The bounds are relative to the same posters' latencies just before the
# erasure, in the same run: a loaded machine (other tests in parallel) slows both alike, while a
# stall shows as a worst case of the whole erasure's length.
P99_FACTOR, P99_SLACK_SECONDS = 3, 0.05
WORST_FACTOR, WORST_SLACK_SECONDS = 3, 0.2


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


@pytest.mark.alone
def test_erasing_a_large_user_does_not_stall_other_writers(tmp_root: Path) -> None:
    with fresh_database() as url:
        plant(url, HEAVY, PLANTED)
        server = start_api(url, tmp_root, JOTC_ACCESS_LOG="false")
        try:
            outcome = asyncio.run(erase_while_posting(server.base_url))
        finally:
            server.stop()
        others, before = outcome["other_latencies"], outcome["baseline_latencies"]
        assert len(others) > 50, "too few posts during the erasure to judge"
        assert len(before) > 50, "too few posts before the erasure to compare with"
        said = (
            f"other users' POSTs during the erasure: p50 {percentile(others, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(others, 0.99) * 1000:.1f} ms, worst {max(others) * 1000:.0f} ms, {len(others)} posts; "
            f"just before it: p50 {percentile(before, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(before, 0.99) * 1000:.1f} ms, worst {max(before) * 1000:.0f} ms, {len(before)} posts"
        )
        print(said)
        assert percentile(others, 0.99) <= P99_FACTOR * percentile(before, 0.99) + P99_SLACK_SECONDS, said
        assert max(others) <= WORST_FACTOR * max(before) + WORST_SLACK_SECONDS, said
        assert outcome["failures"] == 0, f"{outcome['failures']} POSTs during the erasure were not answered 201"
        # Everything recorded up to the erasure is gone; the heavy user's requests made during it stay.
        with psycopg.connect(url) as db:
            before, after = db.execute(
                "SELECT count(*) FILTER (WHERE r.created_at <= j.cutoff), "
                "count(*) FILTER (WHERE r.created_at > j.cutoff) "
                "FROM jump_requests r JOIN erasure_jobs j ON j.user_name = %s WHERE r.user_name = %s",
                (pseudonym(HEAVY), HEAVY),  # a finished job keeps the name's digest, not the name
            ).fetchone() or (None, None)
        assert before == 0, f"{before} of the heavy user's rows from before the erasure are left"
        assert after is not None
        assert after >= outcome["heavy_posted_once_started"] > 0, (
            f"the heavy user's requests during the erasure: {outcome['heavy_posted_once_started']} posted, {after} kept"
        )
        assert outcome["final"]["deleted"] >= PLANTED, f"the erasure deleted too few rows: {outcome['final']}"
        state = agreement(url)
        assert state["mismatched"] == 0, f"statistics disagree with the rows: {state}"
        assert state["totals"] == state["counted"], f"totals disagree with the rows: {state}"


async def erase_while_posting(base_url: str) -> dict[str, Any]:
    other_latencies: list[float] = []
    baseline_latencies: list[float] = []  # the same posters' other-user POSTs before the erasure
    erasing = asyncio.Event()
    stop = asyncio.Event()
    counts = {"failures": 0, "heavy_after": 0}
    answered = [0] * 8  # answers each poster has had
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
                answered[number] += 1
                if response.status_code != 201:
                    counts["failures"] += 1
                if heavy and started > started_at:
                    counts["heavy_after"] += 1
                elif not heavy:
                    (other_latencies if erasing.is_set() else baseline_latencies).append(took)

        posters = [asyncio.create_task(poster(i)) for i in range(len(answered))]
        try:
            # Steady state first: every poster connected and made a run of round trips.
            await asyncio.to_thread(
                wait_until, lambda: min(answered) >= 30, timeout=30, what="steady load: every poster answered 30 times"
            )
            erasing.set()
            first = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
            started_at = time.perf_counter()
            assert first.status_code in (200, 202), first.text
            final: dict[str, Any] = first.json()
            if first.status_code == 202:
                assert first.headers["location"] == final["status_url"]
                again = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
                if again.status_code == 202:  # the same job, not a second one
                    assert again.json()["requested_at"] == final["requested_at"], "a second DELETE made a second job"
                deadline = time.monotonic() + 45
                while final.get("state") != "done" and time.monotonic() < deadline:
                    # The poll interval of a wait with a deadline; gentle, as every poll is one more
                    # request on the server whose latency is being measured.
                    await asyncio.sleep(0.2)
                    status = await http.get(final["status_url"], headers=AUTH)
                    assert status.status_code == 200, f"the erasure's status: {status.status_code} {status.text}"
                    final = status.json()
                assert final["state"] == "done", f"the erasure did not finish within 45 s: {final}"
            # The load goes on past the erasure's end, so the heavy user's requests made after it are
            # checked too: 10 more answers for every poster (every fifth post is the heavy user's).
            at_done = list(answered)
            await asyncio.to_thread(
                wait_until,
                lambda: all(now - then >= 10 for now, then in zip(answered, at_done, strict=True)),
                timeout=30,
                what="every poster answered 10 more times after the erasure finished",
            )
        finally:  # the posters stop however this ends
            stop.set()
            await asyncio.gather(*posters)
    return {
        "other_latencies": other_latencies,
        "baseline_latencies": baseline_latencies[len(baseline_latencies) // 4 :],  # past the connections' set-up
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
            seen: list[dict[str, Any]] = [{}]

            def finished() -> bool:
                seen[0] = httpx.get(f"{server.base_url}/admin/erasures/{HEAVY}", headers=AUTH).json()
                return seen[0]["state"] == "done"

            try:
                wait_until(finished, timeout=30, what="the next API finishing the erasure left running", interval=0.05)
            except TimeoutError as error:
                raise AssertionError(f"{error}; its last status: {seen[0]}") from None
            status = seen[0]
            assert (status["state"], status["deleted"]) == ("done", 20_000), f"the erasure finished as {status}"
            assert httpx.get(f"{server.base_url}/admin/erasures/nobody", headers=AUTH).status_code == 404
            stats = httpx.get(f"{server.base_url}/admin/stats", headers=AUTH).json()
            assert (stats["total_requests"], stats["total_users"]) == (10, 1), f"totals after the erasure: {stats}"
        finally:
            server.stop()
        state = agreement(url)
        assert state["mismatched"] == 0, f"statistics disagree with the rows: {state}"
        assert state["totals"] == state["counted"] == (10, 1), f"totals and rows after the erasure: {state}"
