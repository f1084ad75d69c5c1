"""An erasure's runner killed mid-job, for real: two API processes behind PgBouncer in transaction
mode, the one running a background erasure SIGKILLed with every worker it had. The other instance
waits out the dead runner's lease, takes the job over and finishes it; every row is erased once and
counted once, and the statistics agree with the rows."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import jotc_provision
import psycopg
from jotc_provision import PgBouncer, wait_until
from support import AUTH, agreement, gone, migrate_command, plant, server_url, start_api, worker_pids

from jotc_api.erasure import LEASE_SECONDS, POLL_SECONDS

PLANTED = 20_000
# The first runner slowed down (100 rows a chunk, working 5 % of the time) so it is killed mid-job.
SLOW = {"JOTC_ERASURE_CHUNK_ROWS": "100", "JOTC_ERASURE_BUSY_PERCENT": "5"}


def status(server_url_: str, user: str) -> dict[str, Any]:
    answer = httpx.get(f"{server_url_}/admin/erasures/{user}", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def rows_of(url: str, user: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT count(*) FROM jump_requests WHERE user_name = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


def lease_of(url: str, user: str) -> Any:
    """The erasure job's lease_until (PostgreSQL's timestamp), None when no runner holds it."""
    with psycopg.connect(url) as db:
        row = db.execute("SELECT lease_until FROM erasure_jobs WHERE user_name = %s", (user,)).fetchone()
    assert row is not None
    return row[0]


def before(url: str, moment: Any) -> bool:
    """Is PostgreSQL's clock still before ``moment``?"""
    with psycopg.connect(url) as db:
        row = db.execute("SELECT now() < %s", (moment,)).fetchone()
    assert row is not None
    return bool(row[0])


def test_a_runner_killed_mid_erasure_is_followed_by_the_other_instance_through_the_pooler(
    tmp_root: Path, tmp_path: Path
) -> None:
    user = f"killed-mid-erasure-{uuid.uuid4().hex[:8]}"
    with jotc_provision.fresh_database(server_url(), migrate_with=migrate_command()) as direct_url:
        bouncer = PgBouncer(tmp_path / "pgbouncer", server_url(), pool_size=4)
        bouncer.start()
        first = second = None
        try:
            pooled = bouncer.url(direct_url)
            plant(direct_url, user, PLANTED)
            plant(direct_url, "kept@example.com", 10)
            settings = {"JOTC_DB_POOLER": "transaction", "JOTC_WORKERS": "1"}
            # Killed, the first leaves what its main process would have removed (its drain flag's
            # directory): in this test's own directory, not the run's.
            first = start_api(pooled, tmp_root, TMPDIR=str(tmp_path), **settings, **SLOW)
            second = start_api(pooled, tmp_root, **settings)
            started = httpx.delete(f"{first.base_url}/admin/users/{user}/requests", headers=AUTH, timeout=30)
            assert started.status_code == 202, f"a background erasure: {started.status_code} {started.text}"
            wait_until(
                lambda: status(second.base_url, user)["deleted"] > 0,
                timeout=60,
                what="the first instance's runner deleting",
                interval=0.05,
            )
            workers = worker_pids(first.process.pid)
            assert len(workers) == 1, f"the first instance's worker, to kill with it: {workers}"
            victims = {first.process.pid, *workers}
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            for pid in victims:
                wait_until(lambda pid=pid: gone(pid), timeout=30, what=f"the killed process {pid} exiting")
            first.process.wait()
            killed_at = status(second.base_url, user)
            assert killed_at["state"] == "running", f"the erasure was not mid-job when killed: {killed_at}"
            assert rows_of(direct_url, user) == PLANTED - killed_at["deleted"], "the status counts what was erased"
            lease_until = lease_of(direct_url, user)
            assert lease_until is not None, "the dead runner left its lease"
            taken_over_before_the_lease_ended: list[bool] = []

            def done() -> dict[str, Any] | None:
                seen = status(second.base_url, user)
                if seen["deleted"] > killed_at["deleted"] and not taken_over_before_the_lease_ended:
                    taken_over_before_the_lease_ended.append(before(direct_url, lease_until))
                return seen if seen["state"] == "done" else None

            finished = wait_until(
                done,
                timeout=LEASE_SECONDS + POLL_SECONDS + 120,  # the lease, the next look, a loaded machine
                what="the other instance finishing the job once the dead runner's lease expired",
                interval=0.2,
            )
        finally:
            for server in (first, second):
                if server is not None and server.process.poll() is None:
                    server.stop()
            bouncer.stop()
        assert taken_over_before_the_lease_ended == [False], "the other instance ran while the lease held"
        assert finished["deleted"] == PLANTED, f"every row erased once, counted once: {finished}"
        assert killed_at["deleted"] < PLANTED
        assert rows_of(direct_url, user) == 0
        assert rows_of(direct_url, "kept@example.com") == 10, "only the erased user's rows went"
        state = agreement(direct_url)
        assert state["mismatched"] == 0, f"statistics disagree with the rows: {state}"
        assert state["totals"] == state["counted"] == (10, 1), f"totals and rows after the erasure: {state}"
