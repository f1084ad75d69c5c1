"""Erasure of a large user through the real server: other users' writes are answered while it
runs, the user's own new requests are kept, the erasure finishes in the background, survives a
restart, and statistics and totals agree with the rows throughout. How far an erasure moves other
users' latency is a measurement, not a test: scripts/scale/measure.py --plant reports it
(scripts/scale/README.md)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jotc_load
import psycopg
from jotc_provision import wait_until
from support import ADMIN_TOKEN, agreement, fresh_database, plant, start_api

from jotc_api.erasure import pseudonym

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HEAVY = "heavy@example.com"
PLANTED = 200_000
# POST /jumps a second, sent on time whatever the answers' latency (a stall holds answers back
# instead of sending fewer requests), one in five from the heavy user.
RATE = 20
# At the default pace (a tenth of the time) 200,000 rows take ~26 s on an idle machine; the deadline
# is for a hung erasure, not a slow machine.
ERASURE_DEADLINE_SECONDS = 240
# A process started with these empty starts no coverage (coverage's subprocess patch reads them).
UNTRACED = {"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""}


@dataclass
class Around:
    """What the POSTs around one erasure got, and when the erasure was seen running (monotonic
    seconds): from its first answer to the last status poll, sent after it, that said running."""

    failures: list[str] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)  # other users' 201s, when each arrived
    heavy_sent_once_started: int = 0  # the heavy user's 201s for POSTs sent after the erasure began
    started: float = float("inf")
    last_seen_running: float = float("-inf")
    final: dict[str, Any] = field(default_factory=dict)

    def answered_while_running(self) -> int:
        return sum(1 for at in self.answered if self.started < at < self.last_seen_running)


def test_other_users_writes_are_answered_while_a_large_user_is_erased(tmp_root: Path) -> None:
    with fresh_database() as url:
        plant(url, HEAVY, PLANTED)
        # The server runs without coverage: the erasure rests in proportion to its chunks' time,
        # and traced they take several times longer (so would the test). Other tests cover this code.
        server = start_api(url, tmp_root, JOTC_ACCESS_LOG="false", **UNTRACED)
        try:
            around = asyncio.run(erase_while_posting(server.base_url))
        finally:
            server.stop()
        assert not around.failures, f"POSTs not answered 201 around the erasure: {around.failures[:5]}"
        # The erasure before the chunks, one transaction, held every other writer until it ended.
        assert around.last_seen_running > around.started, f"the erasure was never seen running: {around.final}"
        assert around.answered_while_running() > 0, (
            f"no other user's POST was answered while the erasure ran ({len(around.answered)} in all)"
        )
        # Everything recorded up to the erasure is gone; the heavy user's requests made during it stay.
        with psycopg.connect(url) as db:
            erased, kept = db.execute(
                "SELECT count(*) FILTER (WHERE r.created_at <= j.cutoff), "
                "count(*) FILTER (WHERE r.created_at > j.cutoff) "
                "FROM jump_requests r JOIN erasure_jobs j ON j.user_name = %s WHERE r.user_name = %s",
                (pseudonym(HEAVY), HEAVY),  # a finished job keeps the name's digest, not the name
            ).fetchone() or (None, None)
        assert erased == 0, f"{erased} of the heavy user's rows from before the erasure are left"
        assert kept is not None
        assert kept >= around.heavy_sent_once_started > 0, (
            f"the heavy user's requests during the erasure: {around.heavy_sent_once_started} posted, {kept} kept"
        )
        assert around.final["deleted"] >= PLANTED, f"the erasure deleted too few rows: {around.final}"
        state = agreement(url)
        assert state["mismatched"] == 0, f"statistics disagree with the rows: {state}"
        assert state["totals"] == state["counted"], f"totals disagree with the rows: {state}"


async def erase_while_posting(base_url: str) -> Around:
    """POSTs at RATE: a few seconds of them, then the heavy user's erasure until it is done, then
    two more seconds (the heavy user's requests after the erasure are checked too)."""
    around = Around()
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=httpx.Limits(max_connections=64)) as http:

        async def post(number: int) -> None:
            heavy = number % 5 == 0
            user = HEAVY if heavy else f"other-{number % 200}@example.com"
            sent = time.monotonic()
            try:
                response = await http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0], "user": user})
            except httpx.HTTPError as error:  # no answer at all (timed out, refused, reset)
                around.failures.append(f"{type(error).__name__}: {error}")
                return
            if response.status_code != 201:
                around.failures.append(f"{response.status_code} {response.text[:200]}")
            elif heavy:
                around.heavy_sent_once_started += sent > around.started
            else:
                around.answered.append(time.monotonic())

        stop = asyncio.Event()
        posting = asyncio.create_task(jotc_load.steady(post, RATE, stop))
        try:
            await asyncio.to_thread(  # the load under way: some other users' POSTs answered
                wait_until, lambda: len(around.answered) >= 10, timeout=60, what="10 POSTs answered before the erasure"
            )
            first = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
            around.started = time.monotonic()
            assert first.status_code == 202, (
                f"{PLANTED:,} rows erased in the first answer: {first.status_code} {first.text}"
            )
            around.final = first.json()
            assert first.headers["location"] == around.final["status_url"]
            again = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
            if again.status_code == 202:  # the same job, not a second one
                assert again.json()["requested_at"] == around.final["requested_at"], "a second DELETE made a second job"
            deadline = time.monotonic() + ERASURE_DEADLINE_SECONDS
            while around.final.get("state") != "done" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # the poll interval of a wait with a deadline
                asked = time.monotonic()
                status = await http.get(around.final["status_url"], headers=AUTH)
                assert status.status_code == 200, f"the erasure's status: {status.status_code} {status.text}"
                around.final = status.json()
                if around.final["state"] == "running":
                    around.last_seen_running = asked
            unfinished = f"the erasure did not finish within {ERASURE_DEADLINE_SECONDS} s: {around.final}"
            assert around.final["state"] == "done", unfinished
            await asyncio.sleep(2)  # the load goes on past the erasure's end: not a wait for anything
        finally:  # the load stops however this ends
            stop.set()
            await posting
    return around


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
                seen[0] = httpx.get(f"{server.base_url}/admin/erasures/{HEAVY}", headers=AUTH, timeout=30).json()
                return seen[0]["state"] == "done"

            try:
                wait_until(
                    finished,
                    timeout=ERASURE_DEADLINE_SECONDS,
                    what="the next API finishing the erasure left running",
                    interval=0.05,
                )
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
