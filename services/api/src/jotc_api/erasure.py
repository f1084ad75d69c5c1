"""Erasure of a user's records in short chunks, so erasing a user of any size never stalls other writers.

An erasure is a row of ``erasure_jobs``: the user, the cutoff (the moment it
was asked; requests recorded up to then are erased, the user's later ones are
kept), how many rows are gone, and its state. It runs as a series of chunks,
each its own short transaction:

1. delete up to ``chunk_rows`` of the user's requests with ``created_at <= cutoff``
   (no statistics lock is held while they are deleted);
2. lock the user's statistics row, subtract what was deleted, delete the row
   when nothing is left (triggers keep ``stats_totals`` true in the same
   transaction), and record the progress in ``erasure_jobs``; commit.

The statistics row is held for milliseconds, at the end of each chunk, and a
chunk locks that one row, so a recorder batch (which locks its users in
sorted order) waits at most one chunk's tail and cannot deadlock with it.
Rows and statistics agree after every chunk.

Locks are not the only thing an erasure takes from other writers: run flat
out, its deletes keep one PostgreSQL backend busy and fill the WAL that every
commit waits to flush. So the runner paces itself: after each chunk it rests
long enough that it works at most ``busy_share`` of the time
(``JOTC_ERASURE_BUSY_PERCENT``), as autovacuum's cost delay paces vacuum.

One runner works on a given job at a time, and nothing of that rests on the
PostgreSQL session, so it holds behind a transaction-mode pooler (PgBouncer)
as well as on a direct connection:

- the runner claims the job with a lease written into its row (``runner``,
  ``lease_until``): a claim succeeds on a job nobody holds, or whose lease
  has expired;
- every chunk's transaction takes a transaction-scoped advisory lock keyed by
  the user, so no two chunks of one job ever run at once (the previous
  release's runners hold the same lock for a whole job), and commits only if
  its progress update finds the lease still the runner's: a runner that lost
  its lease (it stalled past it and another took over) rolls its chunk back
  and stops;
- each chunk renews the lease for LEASE_SECONDS past its rest, and a runner
  that stops with the job unfinished (its share of a request's time is over)
  clears it. A runner that dies leaves its lease to expire; the next runner
  to look takes the job over then.

``DELETE /admin/users/{user}/requests`` runs the job for a bounded time itself;
what is left is finished by the background ``Eraser`` of some worker of any
instance, which also resumes, at start-up and every ``poll_seconds``, every
job still ``running`` whose lease is free (one left by a restart).
What follows a finished erasure (the user's idempotency keys) runs in the
Eraser's background too, never in the request, and is retried until it works.

A finished job keeps no name: its row is renamed to a digest of the name,
marked with a control character that the user-name rule refuses wherever a
name enters (parsing.check_user), so no user name is another user's record.
The previous release's digests carried no mark, and are read and moved aside
(``MOVE_UNMARKED``) where a user of that very name would collide with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jotc_api import tracing
from jotc_api.settings import DEFAULT

log = structlog.get_logger("jotc.erasure")

# The pace's defaults are the settings' (JOTC_ERASURE_CHUNK_ROWS, JOTC_ERASURE_BUSY_PERCENT).
CHUNK_ROWS: Final[int] = DEFAULT["erasure_chunk_rows"]
BUSY_SHARE: Final[float] = DEFAULT["erasure_busy_percent"] / 100
INLINE_SECONDS: Final = 2.0
POLL_SECONDS: Final = 10.0
# A runner's claim on a job lasts this long past its last chunk's rest; one that dies holds the job
# up for at most that long (and then until another runner next looks: POLL_SECONDS).
LEASE_SECONDS: Final = 30.0
# pg_try_advisory_xact_lock(class, key) class of erasure jobs: "JOTE"; the key is hashtext(user).
# Two users whose names hash alike merely take turns.
LOCK_CLASS: Final = 0x4A4F5445

# A finished job keeps no name: its row is renamed to a digest of the name (it holds nothing else
# of the user), so the status stays readable by whoever knows the name, and nothing names the user.
# The mark is a control character: parsing.check_user refuses every name that holds one, so no
# user's name is another user's pseudonym. A running job's row carries the user's name.
PSEUDONYM_MARK: Final = "\x01"


def pseudonym(user: str) -> str:
    return PSEUDONYM_MARK + unmarked_pseudonym(user)


def unmarked_pseudonym(user: str) -> str:
    """The previous release's pseudonym: a valid user name, so a finished row of that form is read
    as a finished row only, never as a job of a user so named."""
    return "sha256:" + hashlib.sha256(user.encode()).hexdigest()


def job_names(user: str) -> dict[str, str]:
    """The parameters that find a user's job: their name (a running job) and pseudonyms (done)."""
    return {"user": user, "pseudonym": pseudonym(user), "unmarked": unmarked_pseudonym(user)}


# Every statement that returns a job returns these columns, in ErasureJob's order.
# A finished row named exactly as the user is not theirs (theirs are renamed when done): it is
# another user's, left by the previous release without the mark. It is moved to its marked name
# (keeping the newer of the two if both exist), so this user's job can take the name, and the
# other user's record survives.
MOVE_UNMARKED = text(
    """
    WITH unmarked AS (
        DELETE FROM erasure_jobs WHERE user_name = :user AND state = 'done'
        RETURNING state, cutoff, deleted, requested_at, updated_at, finished_at
    )
    INSERT INTO erasure_jobs AS job (user_name, state, cutoff, deleted, requested_at, updated_at, finished_at)
    SELECT :marked, state, cutoff, deleted, requested_at, updated_at, finished_at FROM unmarked
    ON CONFLICT (user_name) DO UPDATE
    SET cutoff = excluded.cutoff, deleted = excluded.deleted, requested_at = excluded.requested_at,
        updated_at = excluded.updated_at, finished_at = excluded.finished_at
    WHERE job.finished_at < excluded.finished_at
    """
)
# A new job, or the job already running (a second request is idempotent). An earlier finished
# job's row, under the pseudonym, stays readable until this one finishes.
START = text(
    """
    INSERT INTO erasure_jobs (user_name, state, cutoff, deleted, requested_at, updated_at)
    VALUES (:user, 'running', now(), 0, now(), now())
    ON CONFLICT (user_name) DO NOTHING
    RETURNING user_name, state, deleted, cutoff, requested_at, updated_at, finished_at
    """
)
READ = text(
    """
    SELECT CAST(:user AS text), state, deleted, cutoff, requested_at, updated_at, finished_at FROM erasure_jobs
    WHERE (user_name = :user AND state = 'running') OR (user_name IN (:pseudonym, :unmarked) AND state = 'done')
    ORDER BY state = 'running' DESC, finished_at DESC LIMIT 1
    """
)
FORGET_EARLIER = text("DELETE FROM erasure_jobs WHERE user_name IN (:pseudonym, :unmarked) AND state = 'done'")
RUNNING = text("SELECT user_name FROM erasure_jobs WHERE state = 'running' ORDER BY requested_at")
RECORDED = text("SELECT id FROM jump_requests WHERE id = ANY(:ids)")
# The job, if it is running, its lease free (nobody's, or expired) and no chunk of it running. CASE
# orders the tests: the user's lock is tried only for a job whose lease is free, so a runner looking
# at a job another holds does not take that lock for an instant (which would make the holder's next
# chunk find it taken, give the job back, and leave it to the next look).
CLAIM = text(
    """
    UPDATE erasure_jobs SET runner = :runner, lease_until = clock_timestamp() + make_interval(secs => :hold)
    WHERE user_name = :user AND state = 'running'
      AND CASE WHEN runner IS NULL OR lease_until < clock_timestamp()
               THEN pg_try_advisory_xact_lock(:class, hashtext(:user)) ELSE false END
    RETURNING user_name, state, deleted, cutoff, requested_at, updated_at, finished_at
    """
)
RELEASE = text("UPDATE erasure_jobs SET runner = NULL, lease_until = NULL WHERE user_name = :user AND runner = :runner")
CHUNK_LOCK = text("SELECT pg_try_advisory_xact_lock(:class, hashtext(:user))")
# Newest first from the cutoff, each chunk resuming after the last row of the one before (the
# keyset), so no chunk walks the index entries its predecessors left dead: without it each chunk
# re-reads every row deleted before it, and erasing 5,000,000 rows slows to a crawl. ctid: the
# rows found are deleted where they lie, without a second index lookup each.
DELETE_CHUNK = text(
    """
    WITH doomed AS (
        SELECT ctid FROM jump_requests
        WHERE user_name = :user AND created_at <= :cutoff AND (created_at, id) < (:after_at, :after_id)
        ORDER BY created_at DESC, id DESC LIMIT :rows
    ), gone AS (
        DELETE FROM jump_requests WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed))
        RETURNING created_at, id
    )
    SELECT count(*), (array_agg(created_at ORDER BY created_at, id))[1], (array_agg(id ORDER BY created_at, id))[1]
    FROM gone
    """
)
# The last pass, without the keyset, over the hour before the cutoff: a row whose batch began
# before the cutoff but committed after the keyset had passed its place. Rows and statistics
# agree either way; this makes the erasure complete.
SWEEP_CHUNK = text(
    """
    WITH gone AS (
        DELETE FROM jump_requests WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM jump_requests
            WHERE user_name = :user AND created_at <= :cutoff AND created_at > :cutoff - interval '1 hour'
            LIMIT :rows
        ))
        RETURNING 1
    )
    SELECT count(*), NULL, NULL FROM gone
    """
)
LAST_ID = uuid.UUID(int=(1 << 128) - 1)
LOCK_STATS = text("SELECT requests FROM user_stats WHERE user_name = :user FOR UPDATE")
SUBTRACT = text("UPDATE user_stats SET requests = requests - :deleted WHERE user_name = :user")
DROP_STATS = text("DELETE FROM user_stats WHERE user_name = :user")
# Only while the lease is the runner's: no row back means another runner has taken the job over.
PROGRESS = text(
    """
    UPDATE erasure_jobs
    SET deleted = deleted + :deleted, updated_at = now(),
        state = CASE WHEN :last THEN 'done' ELSE state END,
        finished_at = CASE WHEN :last THEN now() END,
        user_name = CASE WHEN :last THEN :pseudonym ELSE user_name END,
        runner = CASE WHEN :last THEN NULL ELSE runner END,
        lease_until = CASE WHEN :last THEN NULL ELSE clock_timestamp() + make_interval(secs => :hold) END
    WHERE user_name = :user AND state = 'running' AND runner = :runner
    RETURNING CAST(:user AS text), state, deleted, cutoff, requested_at, updated_at, finished_at
    """
)


@dataclass(frozen=True, slots=True)
class ErasureJob:
    user: str
    state: str  # running | done
    deleted: int
    cutoff: datetime
    requested_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        return self.state == "done"


async def start_job(engine: AsyncEngine, user: str) -> ErasureJob:
    """The user's erasure: a new one, or the one already running."""
    async with engine.begin() as connection:
        await connection.execute(MOVE_UNMARKED, {"user": user, "marked": PSEUDONYM_MARK + user})
        row = (await connection.execute(START, {"user": user})).first()
        if row is None:
            row = (await connection.execute(READ, job_names(user))).one()
    return ErasureJob(*row)


async def read_job(engine: AsyncEngine, user: str) -> ErasureJob | None:
    async with engine.connect() as connection:
        row = (await connection.execute(READ, job_names(user))).first()
    return ErasureJob(*row) if row is not None else None


async def running_users(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(RUNNING)).scalars())


async def recorded_ids(engine: AsyncEngine, ids: Iterable[str]) -> set[str]:
    """Which of these request ids are still recorded (one query): what an erasure kept, as the
    walk over the user's idempotency keys asks (idempotency.forget_erased)."""
    wanted = []
    for record in ids:
        with contextlib.suppress(ValueError):  # not a request's id: nothing of it is recorded
            wanted.append(uuid.UUID(record))
    if not wanted:
        return set()
    async with engine.connect() as connection:
        return {str(found) for found in (await connection.execute(RECORDED, {"ids": wanted})).scalars()}


@dataclass(frozen=True, slots=True)
class Pace:
    """How an erasure runs: rows per chunk, and the share of the time it may work (0 < busy_share
    <= 1); after a chunk that took t seconds it rests t * (1 - busy_share) / busy_share."""

    chunk_rows: int = CHUNK_ROWS
    busy_share: float = BUSY_SHARE
    lease_seconds: float = LEASE_SECONDS

    def rest_after(self, worked: float) -> float:
        return worked * (1 - self.busy_share) / self.busy_share


class LeaseLost(Exception):
    """This runner may not go on with the job; the chunk in hand is rolled back. ``ours``: the lease
    is still this runner's, but the user's lock was held elsewhere (a runner of the previous release,
    or another user whose name hashes alike, for a moment), so the runner gives the lease back and
    whoever looks next takes the job over. Otherwise another runner has taken it over (this one
    stalled past its lease)."""

    def __init__(self, user: str, *, ours: bool = False) -> None:
        super().__init__(user)
        self.ours = ours


@dataclass(frozen=True, slots=True)
class Claim:
    """A runner's hold on one job: who (a fresh id per run) and how it paces itself."""

    runner: uuid.UUID
    pace: Pace

    def parameters(self, user: str, worked: float = 0.0) -> dict[str, object]:
        hold = self.pace.lease_seconds + self.pace.rest_after(worked)
        return {"user": user, "runner": self.runner, "hold": hold, "class": LOCK_CLASS}


async def run_job(
    engine: AsyncEngine, user: str, *, pace: Pace = Pace(), seconds: float | None = None
) -> ErasureJob | None:
    """Work on the user's job, chunk by chunk at its pace, until it is done or ``seconds`` have
    passed. Returns its state then, or None when it is not running or another runner holds it."""
    deadline = None if seconds is None else time.monotonic() + seconds
    claim = Claim(uuid.uuid4(), pace)
    async with engine.connect() as connection:
        try:
            async with connection.begin():
                row = (await connection.execute(CLAIM, claim.parameters(user))).first()
            if row is None:
                return None
            job = await _run_claimed(connection, ErasureJob(*row), claim, deadline)
            if job is not None and not job.done:
                async with connection.begin():  # stopped in time: the next runner need not wait for the lease
                    await connection.execute(RELEASE, {"user": user, "runner": claim.runner})
            return job
        except BaseException:
            # Mid-statement, cancelled or failed: the connection goes; the lease stays until it expires.
            await connection.invalidate()
            raise


async def _run_claimed(
    connection: AsyncConnection, job: ErasureJob, claim: Claim, deadline: float | None
) -> ErasureJob | None:
    after: Keyset | None = (job.cutoff, LAST_ID)
    while not job.done and (deadline is None or time.monotonic() < deadline):
        began = time.monotonic()
        try:
            # No user name on the span: traces are kept by other systems, erasure must not spread it.
            with tracing.span("erasure chunk"):
                job, after = await erase_chunk(connection, job, claim, after)
        except LeaseLost as lost:
            if lost.ours:  # the lock was another's for a moment: the job goes back to whoever looks next
                async with connection.begin():
                    await connection.execute(RELEASE, {"user": job.user, "runner": claim.runner})
            return None
        if not job.done:
            rest = claim.pace.rest_after(time.monotonic() - began)
            if deadline is not None:  # a request's share of the erasure ends on time, rest included
                rest = min(rest, deadline - time.monotonic())
            if rest > 0:
                await asyncio.sleep(rest)
    return job


Keyset = tuple[datetime, uuid.UUID]


async def erase_chunk(
    connection: AsyncConnection, job: ErasureJob, claim: Claim, after: Keyset | None
) -> tuple[ErasureJob, Keyset | None]:
    """One short transaction: delete up to the pace's chunk_rows of the job's rows (after ``after``,
    or in the last sweep when it is None), then settle the user's statistics and the job's progress
    (the statistics row is locked only here, at the end), if the lease is still this runner's.
    Returns the job and where to go on; raises LeaseLost, the chunk rolled back, otherwise."""
    user, chunk_rows = job.user, claim.pace.chunk_rows
    began = time.monotonic()
    parameters = {"user": user, "cutoff": job.cutoff, "rows": chunk_rows}
    async with connection.begin():
        if not (await connection.execute(CHUNK_LOCK, {"class": LOCK_CLASS, "user": user})).scalar_one():
            raise LeaseLost(user, ours=True)
        if after is None:
            found = (await connection.execute(SWEEP_CHUNK, parameters)).one()
        else:
            keyset = {"after_at": after[0], "after_id": after[1]}
            found = (await connection.execute(DELETE_CHUNK, parameters | keyset)).one()
        deleted = int(found[0])
        # The keyset pass ends at its first short chunk; then the sweep, which ends the same way.
        last = after is None and deleted < chunk_rows
        if deleted:
            requests = (await connection.execute(LOCK_STATS, {"user": user})).scalar_one_or_none()
            if requests is not None and requests > deleted:
                await connection.execute(SUBTRACT, {"user": user, "deleted": deleted})
            elif requests is not None:
                await connection.execute(DROP_STATS, {"user": user})
        names = job_names(user)
        if last:
            await connection.execute(FORGET_EARLIER, names)  # an earlier erasure's row
        progress = {**names, **claim.parameters(user, time.monotonic() - began), "deleted": deleted, "last": last}
        row = (await connection.execute(PROGRESS, progress)).first()
        if row is None:
            raise LeaseLost(user)  # leaving the block rolls the chunk back
    following = None if after is None or deleted < chunk_rows else (found[1], found[2])
    return ErasureJob(*row), following


class Eraser:
    """A worker's background runner: finishes the jobs that outlive their request, and resumes
    those left running by a restart, at start-up and every ``poll_seconds``. After every erasure
    that finishes in this worker, in a request or here, ``on_finished(user)`` runs in a task of its
    own (never in the request), and is tried again every ``poll_seconds`` until it succeeds."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_finished: Callable[[str], Awaitable[None]],
        *,
        pace: Pace = Pace(),
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._engine = engine
        self._on_finished = on_finished
        self.pace = pace
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._finished: set[str] = set()  # users whose on_finished has yet to succeed
        self._follow = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="eraser")
        self._follow_up = asyncio.create_task(self._follow_up_loop(), name="eraser follow-up")

    async def erase(self, user: str, seconds: float = INLINE_SECONDS) -> ErasureJob:
        """Start (or find) the user's erasure and work on it for up to ``seconds``; what is left
        continues in the background."""
        job = await start_job(self._engine, user)
        if not job.done:
            job = await run_job(self._engine, user, pace=self.pace, seconds=seconds) or job
        if job.done:
            self.finished(user)
        else:
            self._wake.set()
        return job

    def finished(self, user: str) -> None:
        self._finished.add(user)
        self._follow.set()

    async def close(self) -> None:
        """Stop; a chunk in flight is rolled back and its job resumed by the next runner. A follow-up
        not yet done is dropped (what that means for idempotency keys: docs/reliability.md)."""
        # The flag as well as the cancellation: a library that turns a cancellation arriving with
        # its own timeout into TimeoutError (caught below as a failure) must not keep a loop going.
        self._closing = True
        self._wake.set()
        self._follow.set()
        for task in (self._task, self._follow_up):
            task.cancel()
        await asyncio.gather(self._task, self._follow_up, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._closing:
            try:
                for user in await running_users(self._engine):
                    job = await run_job(self._engine, user, pace=self.pace)
                    if job is not None and job.done:
                        log.info("erasure finished", deleted=job.deleted)
                        self.finished(user)
            except (SQLAlchemyError, psycopg.Error, OSError) as exc:
                log.warning("erasure runner: database unavailable; retrying", error=str(exc).splitlines()[0])
            except Exception:
                log.exception("erasure runner failed; retrying")
            await wait_at_most(self._wake, self._poll_seconds)
            self._wake.clear()

    async def _follow_up_loop(self) -> None:
        while not self._closing:
            # Idle until an erasure finishes; while a follow-up failed, look again every poll_seconds.
            await wait_at_most(self._follow, self._poll_seconds if self._finished else None)
            self._follow.clear()
            for user in [] if self._closing else list(self._finished):
                try:
                    await self._on_finished(user)
                except Exception as exc:
                    # The user's name stays out of the log: they have just been erased.
                    log.warning(
                        "after an erasure: its follow-up failed; retrying",
                        waiting=len(self._finished),
                        error=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                    )
                    break  # Redis or PostgreSQL is down for the others too: all again later
                self._finished.discard(user)


async def wait_at_most(event: asyncio.Event, seconds: float | None) -> None:
    """Until the event is set or ``seconds`` pass (None: no limit). asyncio.timeout, not
    asyncio.wait_for: on Python 3.11, wait_for returns normally when it is cancelled at the moment
    the event is set, and a loop built on it would go on after Eraser.close() had cancelled it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
