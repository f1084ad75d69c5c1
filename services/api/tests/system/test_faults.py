"""Faults under load, loopback only and bounded: PostgreSQL stopped hard and restarted, a Granian
worker killed. Each test prints its figures (requests, acknowledged, recorded, time to recover)."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from jotc_provision import free_port, wait_until
from support import gone, migrate_command, start_api, worker_pids


def pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), "")
    if not found:
        pytest.fail(f"{name} is needed for this test (Debian: apt-get install postgresql)")
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own, which it may stop with -m immediate."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")
        subprocess.run(
            [
                *self.as_postgres,
                pg_tool("initdb"),
                "-D",
                str(directory / "db"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [
                *self.as_postgres,
                pg_tool("pg_ctl"),
                "-D",
                str(self.directory / "db"),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.directory / "server.log"),
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.directory}",
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not pytest's tmp_path: its root is private to root, and PostgreSQL runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="jotc-pg-"))
    directory.chmod(0o755)
    server = PrivatePostgres(directory)
    server.ctl("start")
    yield server
    subprocess.run(
        [*server.as_postgres, pg_tool("pg_ctl"), "-D", str(directory / "db"), "-m", "immediate", "stop"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(directory, ignore_errors=True)


async def load_until(base: str, stop: asyncio.Event, record: list[tuple[str, int, str | None]]) -> None:
    """Ten concurrent clients posting until told to stop; every outcome is recorded."""
    async with httpx.AsyncClient(base_url=base, timeout=15) as client:

        async def one_client() -> None:
            while not stop.is_set():
                try:
                    response = await client.post("/jumps", json={"clouds": [0, 0, 1, 0], "user": "fault"})
                    request_id = response.json().get("id") if response.status_code == 201 else None
                    record.append(("answer", response.status_code, request_id))
                except httpx.HTTPError as exc:
                    record.append(("cut", 0, type(exc).__name__))
                await asyncio.sleep(0.01)  # the pace of the load

        await asyncio.gather(*(one_client() for _ in range(10)))


def test_postgres_stopped_hard_under_load_then_restarted(private_postgres: PrivatePostgres, tmp_path: Path) -> None:
    subprocess.run(
        [migrate_command(), "upgrade"],
        env={**os.environ, "DATABASE_URL": private_postgres.url},
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = start_api(private_postgres.url, tmp_path)
    outcomes: list[tuple[str, int, str | None]] = []
    try:

        def answered(status: int, since: int, at_least: int = 1) -> bool:
            """At least `at_least` answers `status` among the outcomes from index `since` on."""
            return sum(1 for kind, got, _ in outcomes[since:] if kind == "answer" and got == status) >= at_least

        async def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> float:
            """Wait (in a thread, the load going on) until condition() holds; when it did."""
            await asyncio.to_thread(wait_until, condition, timeout=timeout, what=what)
            return time.monotonic()

        async def scenario() -> float:
            stop = asyncio.Event()
            load = asyncio.create_task(load_until(server.base_url, stop, outcomes))
            try:
                await wait_for(lambda: answered(201, 0, 50), timeout=30, what="steady load first: 50 answered 201")
                stopped = len(outcomes)
                await asyncio.to_thread(private_postgres.ctl, "-m", "immediate", "stop")
                await wait_for(
                    lambda: answered(503, stopped), timeout=30, what="the API answering 503 with PostgreSQL down"
                )
                await asyncio.to_thread(private_postgres.ctl, "start")
                restarted = time.monotonic()
                seen = len(outcomes)
                recovered_at = await wait_for(
                    lambda: answered(201, seen), timeout=30, what="a 201 after PostgreSQL's restart"
                )
                recovered = len(outcomes)
                await wait_for(
                    lambda: answered(201, recovered, 50), timeout=30, what="the load going on: 50 more answered 201"
                )
            finally:
                stop.set()
                await load
            return recovered_at - restarted

        recovery = asyncio.run(scenario())
    finally:
        server.stop()
    statuses = Counter(status for kind, status, _ in outcomes if kind == "answer")
    cut = sum(1 for kind, _, _ in outcomes if kind == "cut")
    acknowledged = {request_id for kind, status, request_id in outcomes if status == 201 and request_id}
    with psycopg.connect(private_postgres.url, autocommit=True) as db:
        recorded = {str(row[0]) for row in db.execute("SELECT id FROM jump_requests").fetchall()}
        stats = db.execute("SELECT requests FROM user_stats WHERE user_name = 'fault'").fetchone()
    print(
        f"\nfault: PostgreSQL immediate stop: {len(outcomes)} requests, {len(acknowledged)} acknowledged, "
        f"{len(recorded)} recorded, {statuses[503]} answered 503, {cut} cut, recovered {recovery:.2f} s after restart"
    )
    assert set(statuses) <= {201, 503}, f"answers other than 201 and 503: {dict(statuses)}"
    assert statuses[503] >= 1, f"no 503 while PostgreSQL was down: {dict(statuses)}"
    lost = acknowledged - recorded
    assert acknowledged <= recorded, f"{len(lost)} requests answered 201 have no row"  # every 201 has its row
    unacknowledged = len(recorded - acknowledged)
    # An extra row belongs to a request that was not told 201.
    assert unacknowledged <= statuses[503] + cut, f"{unacknowledged} rows unacknowledged, more than 503s and cuts"
    assert stats == (len(recorded),), f"user_stats says {stats}, the rows {len(recorded)}"


def test_a_killed_worker_is_respawned_and_the_other_keeps_serving(database_url: str, tmp_path: Path) -> None:
    """Once the killed worker is gone, every request is answered 201: by the other worker until the
    replacement starts, then by both. (A request the victim held when it died is lost with it; none
    is sent then, so every one sent here must be answered.)"""
    server = start_api(database_url, tmp_path)
    try:
        before = worker_pids(server.process.pid)
        assert len(before) == 2, before
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: gone(victim), timeout=30, what=f"the killed worker {victim} exiting")
        statuses: Counter[int | str] = Counter()

        def post() -> None:
            """One request on a new connection (each may reach either worker); its answer counted."""
            try:
                statuses[httpx.post(f"{server.base_url}/jumps", json={"clouds": [0, 0]}, timeout=30).status_code] += 1
            except httpx.TransportError as error:
                statuses[type(error).__name__] += 1

        def respawned() -> set[int] | None:
            """The workers once the replacement has started (the third "Started worker-" line)."""
            post()  # the load goes on while the replacement starts
            after = worker_pids(server.process.pid)
            started = server.log().count("Started worker-") >= 3
            return after if started and len(after) == 2 and victim not in after else None

        # A worker's start (Python, the application's imports) on a loaded machine: the timeout is
        # for a server that never respawns it.
        after = wait_until(respawned, timeout=120, what="a new worker started in place of the killed one")
        for _ in range(20):  # both workers serving again
            post()
        print(f"\nfault: worker SIGKILL: {dict(statuses)} after the kill; workers {sorted(before)} -> {sorted(after)}")
        assert set(statuses) == {201}, f"answers other than 201 once the killed worker was gone: {dict(statuses)}"
        assert httpx.get(f"{server.base_url}/readyz", timeout=30).status_code == 200
    finally:
        server.stop()
