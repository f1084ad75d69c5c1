"""Erasure runners of several instances on one database: one runner per job at a time, a runner that
dies mid-job leaves the job to another instance once its lease expires, and the job finishes with
rows and statistics in agreement. Each "instance" is an engine of its own (its own connections and
runner ids), as two pods are; in scripts/test's pooled pass they reach PostgreSQL through PgBouncer
in transaction mode, where a session's state would not survive."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from support import POOLER_SETTINGS, agreement, plant

from jotc_api import erasure
from jotc_api.app import make_engine
from jotc_api.erasure import Eraser, Pace, read_job, run_job, start_job
from jotc_api.settings import load_settings

ROWS = 3000
# Long enough that the second instance's first look, right after the kill, finds the dead runner's
# lease live even on a machine stalled for seconds; the test waits it out once.
LEASE = 15.0


def instance(url: str):  # type: ignore[no-untyped-def]
    return make_engine(load_settings({"DATABASE_URL": url, **POOLER_SETTINGS, "JOTC_DB_POOL_SIZE": "2"}))


async def until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := await condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)
    return found


def remaining(url: str, user: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM jump_requests WHERE user_name = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_runner_killed_mid_job_is_followed_by_another_instance_once_its_lease_expires(
    database_url: str,
) -> None:
    user = f"killed-runner-{uuid.uuid4().hex[:8]}"
    plant(database_url, user, ROWS)
    first, second = instance(database_url), instance(database_url)
    try:
        await start_job(first, user)
        slow = Pace(chunk_rows=100, busy_share=0.2, lease_seconds=LEASE)
        runner = asyncio.create_task(run_job(first, user, pace=slow))

        async def under_way() -> bool:
            job = await read_job(second, user)
            return job is not None and job.deleted > 0

        await until(under_way, 30, "the first instance's runner deleting")
        runner.cancel()  # as a killed pod leaves it: the connection gone mid-job, the lease still written
        await asyncio.gather(runner, return_exceptions=True)
        stopped_at = (await read_job(second, user)).deleted  # type: ignore[union-attr]

        fast = Pace(chunk_rows=1000, busy_share=1, lease_seconds=LEASE)
        assert await run_job(second, user, pace=fast) is None, "the dead runner's lease still holds the job"
        assert remaining(database_url, user) == ROWS - stopped_at, "nothing ran while the lease held"

        finished: list[str] = []

        async def on_finished(name: str) -> None:
            finished.append(name)

        eraser = Eraser(second, on_finished, pace=fast, poll_seconds=0.2)
        try:

            async def done() -> bool:
                job = await read_job(second, user)
                return job is not None and job.done

            async def followed_up() -> bool:
                return finished == [user]

            await until(done, LEASE + 30, "the second instance finishing the job after the lease expired")
            await until(followed_up, 10, "the finished erasure's follow-up")
        finally:
            await eraser.close()
        job = await read_job(second, user)
        assert job is not None
        assert (job.state, job.deleted) == ("done", ROWS), "every row erased once, counted once"
        assert remaining(database_url, user) == 0
        assert agreement(database_url)["mismatched"] == 0
    finally:
        await first.dispose()
        await second.dispose()


async def test_two_instances_asked_at_once_run_the_job_once(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = f"asked-twice-{uuid.uuid4().hex[:8]}"
    plant(database_url, user, ROWS)
    first, second = instance(database_url), instance(database_url)
    chunks: list[int] = []
    erase_chunk = erasure.erase_chunk

    async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        job, after = await erase_chunk(*args, **kwargs)
        chunks.append(job.deleted)
        return job, after

    monkeypatch.setattr(erasure, "erase_chunk", counted)
    try:
        await start_job(first, user)
        pace = Pace(chunk_rows=200, busy_share=0.5)
        jobs = await asyncio.gather(run_job(first, user, pace=pace), run_job(second, user, pace=pace))
        ran = [job for job in jobs if job is not None]
        assert len(ran) == 1, f"one runner took the job, the other left it: {jobs}"
        assert ran[0].done
        assert ran[0].deleted == ROWS
        assert chunks == sorted(chunks), "one runner's chunks, one after another"
    finally:
        await first.dispose()
        await second.dispose()
    assert remaining(database_url, user) == 0
    assert agreement(database_url)["mismatched"] == 0
