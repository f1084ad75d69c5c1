"""The write path under concurrency, database outages and shutdown, through the real server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
from jotc_provision import wait_until
from support import fresh_database, proxied, start_api

Connection = psycopg.Connection[tuple[object, ...]]


async def burst(
    base_url: str, bodies: list[dict[str, object]], timeout: float = 60
) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(client.post("/jumps", json=body) for body in bodies), return_exceptions=True)


def rows_for(db: Connection, ids: list[str]) -> set[str]:
    found = db.execute("SELECT id::text FROM jump_requests WHERE id = ANY(%s::uuid[])", (ids,)).fetchall()
    return {str(row[0]) for row in found}


def test_hundreds_of_simultaneous_requests_make_exactly_that_many_rows(tmp_root: Path) -> None:
    users = [f"burst-{i % 7}@example.com" for i in range(400)]
    with fresh_database() as database_url:
        server = start_api(database_url, tmp_root)
        try:
            answers = asyncio.run(burst(server.base_url, [{"clouds": [0, 0, 1, 0, 0, 1, 0], "user": u} for u in users]))
        finally:
            server.stop()
        assert all(isinstance(a, httpx.Response) and a.status_code == 201 for a in answers), (
            f"not every simultaneous request was answered 201: {answers[:3]}"
        )
        with psycopg.connect(database_url, autocommit=True) as db:
            rows = db.execute("SELECT count(*) FROM jump_requests").fetchone()
            assert rows == (400,), f"400 requests made {rows} rows"
            stats = dict(db.execute("SELECT user_name, requests FROM user_stats").fetchall())
            assert stats == dict(Counter(users))
            ids = [a.json()["id"] for a in answers if isinstance(a, httpx.Response)]
            assert len(rows_for(db, ids)) == 400, "an acknowledged request has no row"
            batches = db.execute("SELECT count(DISTINCT created_at) FROM jump_requests").fetchone()
            assert batches is not None
            assert int(str(batches[0])) < 400, "every row was written alone: no batching"


def test_database_outage_gives_503_never_an_unrecorded_201_and_recovers(
    database_url: str, tmp_root: Path, db: Connection
) -> None:
    with proxied(database_url) as (proxy, through_proxy):
        server = start_api(through_proxy, tmp_root)
        try:
            base = server.base_url
            healthy = asyncio.run(burst(base, [{"clouds": [0, 0], "user": "outage"}] * 20))
            assert all(isinstance(a, httpx.Response) and a.status_code == 201 for a in healthy), (
                f"not every request was answered 201 before the outage: {healthy[:3]}"
            )

            proxy.cut()
            down = asyncio.run(burst(base, [{"clouds": [0, 0], "user": "outage"}] * 30, timeout=30))
            statuses = Counter(a.status_code for a in down if isinstance(a, httpx.Response))
            assert set(statuses) <= {201, 503}, statuses
            assert statuses[503] >= 1
            for answer in down:
                assert isinstance(answer, httpx.Response)
                if answer.status_code == 503:
                    assert answer.headers["retry-after"]
                    assert answer.headers["content-type"].startswith("application/problem+json")
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 503, f"/readyz during the outage: {ready.status_code} {ready.text}"
            assert httpx.get(f"{base}/healthz").status_code == 200

            proxy.restore()

            def posted() -> httpx.Response | None:
                answer = httpx.post(f"{base}/jumps", json={"clouds": [0, 0], "user": "outage"}, timeout=10)
                return answer if answer.status_code == 201 else None

            recovered = wait_until(
                posted, timeout=30, what="POST /jumps answering 201 once the database is back", interval=0.05
            )
            assert recovered is not None
            assert recovered.status_code == 201
            after = asyncio.run(burst(base, [{"clouds": [0, 0], "user": "outage"}] * 20))
            assert all(isinstance(a, httpx.Response) and a.status_code == 201 for a in after), (
                f"not every request was answered 201 after the recovery: {after[:3]}"
            )
        finally:
            server.stop()

    acknowledged = [
        a.json()["id"] for a in [*healthy, *down, *after] if isinstance(a, httpx.Response) and a.status_code == 201
    ]
    found = rows_for(db, acknowledged)
    assert found == set(acknowledged), f"{len(set(acknowledged) - found)} requests answered 201 have no row"


def test_sigterm_finishes_in_flight_requests_and_drains_the_recorder(tmp_root: Path) -> None:
    with fresh_database() as database_url, proxied(database_url) as (proxy, slow):
        # A drain keeps the listener open after the signal, so a request a loaded machine was slow
        # to write still reaches the server (without one, some got no connection at all); 5 s of it
        # is seconds more than the client needs to send them all.
        server = start_api(slow, tmp_root, JOTC_SHUTDOWN_TIMEOUT="20", JOTC_DRAIN_SECONDS="5")
        # The database turns slow once the API is up: start-up's own round trips would take 20 s.
        proxy.delay = 0.3

        def writing(db: Connection) -> bool:
            """Has a recorder batch reached PostgreSQL (through the slow proxy)?"""
            found = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query LIKE '%INSERT INTO jump_requests%'"
            ).fetchone()
            return found is not None and int(str(found[0])) > 0

        async def scenario(db: Connection) -> list[httpx.Response | Exception]:
            requests = asyncio.create_task(
                burst(server.base_url, [{"clouds": [0, 0], "user": "drain"}] * 40, timeout=60)
            )
            # The signal comes once requests are accepted and waiting on the slow database.
            await asyncio.to_thread(
                wait_until, lambda: writing(db), timeout=30, what="a recorder batch reaching PostgreSQL"
            )
            server.process.send_signal(signal.SIGTERM)
            return await requests

        with psycopg.connect(database_url, autocommit=True) as watcher:
            answers = asyncio.run(scenario(watcher))
        started = time.monotonic()
        code = server.process.wait(timeout=40)
        took = time.monotonic() - started
        assert took < 25, f"the server took {took:.1f} s to stop after answering"
        assert code == 0, f"the server exited with {code}:\n{server.log()}"
        responses = [a for a in answers if isinstance(a, httpx.Response)]
        unanswered = [a for a in answers if not isinstance(a, httpx.Response)]
        # Every request sent before the signal is answered.
        assert len(responses) == 40, f"{len(unanswered)} of 40 requests got no answer: {unanswered[:3]}"
        assert all(r.status_code == 201 for r in responses), (
            f"answers other than 201: {Counter(r.status_code for r in responses)}"
        )
        assert "recorder drained" in server.log(), f"the recorder did not say it drained:\n{server.log()}"
        with psycopg.connect(database_url, autocommit=True) as db:
            ids = [r.json()["id"] for r in responses]
            found = rows_for(db, ids)
            assert found == set(ids), f"{len(set(ids) - found)} requests answered 201 have no row"
