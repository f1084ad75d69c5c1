"""The write path: how a solved request becomes a durable row, and what happens on failure.

Each worker process runs one Recorder. A request hands over its row and waits;
writer tasks take everything queued (up to ``max_batch`` rows) and write it in
ONE statement, which inserts the rows and folds them into ``user_stats``
(users sorted, so concurrent workers lock them in the same order and cannot
deadlock). The statement runs in autocommit mode, so it is its own
transaction: when it returns, every row in it is committed, and only then are
the waiting requests answered 201. Under light load a batch is one row (sent
as plain values; a larger batch as one array per column) and the cost is one
round trip; under heavy load batches grow and throughput follows.

Each writer keeps one pooled connection for its life instead of checking one
out per batch; at one row per batch the checkout would cost more than the
commit. Before each batch one poll of its socket tells whether the server has
closed it meanwhile (a PgBouncer or PostgreSQL restart); such a connection is
replaced before anything is sent on it.

Failure: if PostgreSQL cannot be reached, or the statement fails or times out,
every request in that batch gets DatabaseUnavailable (503, nothing
acknowledged) and the writer throws its connection away; the next batch
connects afresh, so recovery needs no restart. A connection that dies
mid-statement leaves the outcome unknown to us; the client was told 503, so at
worst a row exists that was never acknowledged, never the reverse.

Shutdown: ``close()`` stops accepting rows, lets the writers drain everything
already queued, then returns; the app closes the pool after that.
"""

from __future__ import annotations

import asyncio
import select
import time
import uuid
from typing import Final, NamedTuple

import msgspec
import psycopg
import structlog
from opentelemetry.trace import SpanContext, Status, StatusCode
from prometheus_client import Counter, Histogram
from psycopg.rows import TupleRow
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jotc_api import tracing
from jotc_api.deadline import Deadline

log = structlog.get_logger("jotc.recorder")

BATCH_ROWS = Histogram(
    "jotc_recorder_batch_rows",
    "Rows written per recorder batch (one statement, one transaction)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_SECONDS = Histogram(
    "jotc_recorder_commit_seconds",
    "Time to write and commit one recorder batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FAILED_ROWS = Counter(
    "jotc_recorder_failed_rows",
    "Rows not recorded because PostgreSQL failed (each answered 503)",
)

# The write: insert the rows, fold them into user_stats, one statement (its own transaction).
# psycopg placeholders, binary (%b): values and arrays go over the wire without text quoting.
RECORD: Final = """
    WITH new_rows AS (
        INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps)
        {rows}
        RETURNING user_name, created_at
    )
    INSERT INTO user_stats AS stats (user_name, requests, last_request_at)
    SELECT user_name, count(*), max(created_at) FROM new_rows
    GROUP BY user_name ORDER BY user_name
    ON CONFLICT (user_name) DO UPDATE
    SET requests = stats.requests + excluded.requests,
        last_request_at = greatest(stats.last_request_at, excluded.last_request_at)
"""
# A batch: one array per column.
RECORD_BATCH: Final = RECORD.replace(
    "{rows}",
    """SELECT * FROM unnest(
            %(ids)b::uuid[], %(users)b::text[], %(ns)b::integer[],
            %(max_jumps)b::smallint[], %(clouds)b::bytea[], %(jumps)b::integer[]
        )""",
)
# A batch of one, the usual batch under light load, with plain values: psycopg adapts six arrays
# for far more client CPU than six values (scripts/bench --statements measures both).
RECORD_ONE: Final = RECORD.replace(
    "{rows}",
    """VALUES (
            %(ids)b::uuid, %(users)b::text, %(ns)b::integer,
            %(max_jumps)b::smallint, %(clouds)b::bytea, %(jumps)b::integer
        )""",
)


class DatabaseUnavailable(Exception):
    """The row was not acknowledged as recorded: PostgreSQL failed, or the service is stopping.
    Its message is told to the client: it names PostgreSQL's role, never its address or its error
    text (those go to the log)."""


class Overloaded(DatabaseUnavailable):
    """The row was not queued: this worker already has max_pending rows waiting for PostgreSQL."""


class Row(msgspec.Struct, frozen=True):
    id: uuid.UUID
    user: str
    n: int
    max_jump: int
    clouds: bytes  # bit-packed
    jumps: int


class _Stop:
    """Queued after the last row on shutdown: a writer that takes it exits."""


# A queued row, the future its request waits on, and that request's span when it is traced and
# sampled: the batch's span links to it.
Waiting = tuple[Row, "asyncio.Future[None]", SpanContext | None]


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int,
        writers: int,
        max_pending: int,
        write_timeout: float,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._write_timeout = write_timeout
        self._queue: asyncio.Queue[Waiting | _Stop] = asyncio.Queue(maxsize=max_pending)
        self._closing = False
        self._tasks = [asyncio.create_task(self._write_loop(), name=f"recorder-writer-{i}") for i in range(writers)]

    async def record(self, row: Row) -> None:
        """Return once the row is committed; raise DatabaseUnavailable if it was not."""
        if self._closing:
            raise DatabaseUnavailable("the service is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        traced = tracing.sampled_context() if tracing.tracer is not None else None
        try:
            self._queue.put_nowait((row, future, traced))
        except asyncio.QueueFull:
            raise Overloaded("too many requests are waiting for the database") from None
        # A client that hangs up cancels this future, not the row: it stays in its batch, and the
        # writer skips answering a cancelled future.
        await future

    async def close(self, timeout: float) -> None:
        """Drain what is queued (up to timeout seconds), then stop the writers."""
        self._closing = True
        for _ in self._tasks:
            await self._queue.put(_Stop())
        _, unfinished = await asyncio.wait(self._tasks, timeout=timeout)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
        left = self._fail_queued("the service stopped before this row was written")
        if unfinished or left:
            log.error("recorder stopped before draining", rows_not_written=left)
        else:
            log.info("recorder drained")

    async def _write_loop(self) -> None:
        """One writer: keeps one pooled connection for its whole life (no checkout per batch),
        and gives it back, invalidated, when it fails."""
        link: Connected | None = None
        try:
            while True:
                first = await self._queue.get()
                if isinstance(first, _Stop):
                    return
                batch = [first]
                while len(batch) < self._max_batch and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if isinstance(item, _Stop):
                        self._queue.put_nowait(item)  # rows first; this writer stops next turn
                        break
                    batch.append(item)
                link = await self._write(link, batch)
        finally:
            if link is not None:
                await link.pooled.close()

    async def _write(self, link: Connected | None, batch: list[Waiting]) -> Connected | None:
        """Write one batch; answer its requests; return the connection to use next time."""
        if tracing.tracer is not None:
            carried = [traced for _, _, traced in batch if traced is not None]
            if carried:
                # A trace of its own, linked to every sampled request it carries (a batch serves many
                # traces).
                attributes: dict[str, str | int] = {"db.system.name": "postgresql", "jotc.batch.rows": len(batch)}
                with tracing.linked_root("recorder batch commit", carried, attributes) as span:
                    link = await self._write_batch(link, batch)
                    answered = [future for _, future, _ in batch if future.done() and not future.cancelled()]
                    if span is not None and any(future.exception() for future in answered):
                        span.set_status(Status(StatusCode.ERROR, "the batch was not recorded"))
                    return link
        return await self._write_batch(link, batch)

    async def _write_batch(self, link: Connected | None, batch: list[Waiting]) -> Connected | None:
        started = time.perf_counter()
        try:
            with Deadline(self._write_timeout):
                if link is not None and hung_up(link.driver):
                    log.info("the recorder's idle connection was closed by the server (a restart?); connecting afresh")
                    await asyncio.shield(discard(link.pooled))  # as in connect(): never cut short
                    link = None
                if link is None:
                    link = await connect(self._engine)
                await insert_rows(link.driver, [row for row, _, _ in batch])
        except (IntegrityError, DataError):
            # Validation mirrors every CHECK and type, so this is a bug; one bad row must not cost
            # the others in its batch their answer: write them one by one.
            log.exception("batch rejected by the database; writing its rows one by one")
            if len(batch) > 1:
                for waiting in batch:
                    link = await self._write_batch(link, [waiting])
                return link
            self._fail(batch, DatabaseUnavailable("the row was rejected by a database constraint"))
            return link
        except (TimeoutError, SQLAlchemyError, psycopg.Error, OSError) as exc:
            self._fail(batch, exc)
            if link is not None:
                await discard(link.pooled)
            return None
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        BATCH_ROWS.observe(len(batch))
        for _, future, _ in batch:
            if not future.done():
                future.set_result(None)
        return link

    def _fail(self, batch: list[Waiting], exc: BaseException) -> None:
        FAILED_ROWS.inc(len(batch))
        log.warning("batch not recorded; answering 503", rows=len(batch), reason=describe_failure(exc))
        told = told_to_clients(exc)
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(DatabaseUnavailable(told))

    def _fail_queued(self, reason: str) -> int:
        failed = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _Stop) and not item[1].done():
                item[1].set_exception(DatabaseUnavailable(reason))
                failed += 1
        return failed


class Connected(NamedTuple):
    """A writer's pooled connection and the psycopg connection underneath it."""

    pooled: AsyncConnection
    driver: psycopg.AsyncConnection[TupleRow]


async def connect(engine: AsyncEngine) -> Connected:
    """A pooled connection for a writer, its psycopg connection in autocommit (each batch
    statement is its own transaction). The psycopg connection is looked up here, once:
    SQLAlchemy's lookup runs through a greenlet, which a one-row batch would pay every time."""
    pooled = await engine.connect()
    try:
        raw = await pooled.get_raw_connection()
        driver: psycopg.AsyncConnection[TupleRow] = raw.driver_connection  # type: ignore[assignment]
        if not driver.autocommit:
            await driver.set_autocommit(True)
    except BaseException:
        # Shielded: the batch's deadline may fire meanwhile, and a discard cut short could keep
        # the connection from its pool for good.
        await asyncio.shield(discard(pooled))
        raise
    return Connected(pooled, driver)


def hung_up(driver: psycopg.AsyncConnection[TupleRow]) -> bool:
    """Has the server ended this idle connection? Between statements neither PostgreSQL nor a
    pooler writes to a client except to end its session (a restart, a terminated backend), so a
    readable socket, or a closed one, means the connection is gone. One poll, no round trip: a
    batch sent on it would fail, and its requests be refused 503, although nothing was sent."""
    if driver.closed:
        return True
    poller = select.poll()
    poller.register(driver.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


async def insert_rows(driver: psycopg.AsyncConnection[TupleRow], rows: list[Row]) -> None:
    """The batch statement on the psycopg connection underneath SQLAlchemy's: this is the one
    hot statement, and SQLAlchemy's per-execution layers cost more than the commit here."""
    if len(rows) == 1:
        (row,) = rows
        statement = RECORD_ONE
        parameters: dict[str, object] = {
            "ids": row.id,
            "users": row.user,
            "ns": row.n,
            "max_jumps": row.max_jump,
            "clouds": row.clouds,
            "jumps": row.jumps,
        }
    else:
        statement = RECORD_BATCH
        parameters = {
            "ids": [row.id for row in rows],
            "users": [row.user for row in rows],
            "ns": [row.n for row in rows],
            "max_jumps": [row.max_jump for row in rows],
            "clouds": [row.clouds for row in rows],
            "jumps": [row.jumps for row in rows],
        }
    try:
        await driver.execute(statement, parameters)
    except psycopg.IntegrityError as exc:
        raise IntegrityError(statement, None, exc) from exc
    except psycopg.DataError as exc:
        raise DataError(statement, None, exc) from exc


async def discard(connection: AsyncConnection) -> None:
    """A connection that failed may be dead or mid-statement: never reuse it."""
    try:
        await connection.invalidate()
        await connection.close()
    except Exception:  # noqa: S110 - it is being thrown away either way
        pass


TIMED_OUT = "PostgreSQL did not answer in time"


def told_to_clients(exc: BaseException) -> str:
    """What a 503 says of a failed write: PostgreSQL's role, never what the driver said, which
    names the server (``connection to server at "10.0.0.5", port 5432 failed``)."""
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    return TIMED_OUT if isinstance(exc, TimeoutError) else "PostgreSQL is unavailable"


def describe_failure(exc: BaseException) -> str:
    """The failure for the log, driver's words included."""
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
