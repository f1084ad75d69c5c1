"""The recorder's write path against a fake engine and a fake batch statement: batching, one bad
row not costing its batch, a failed batch answered 503 with its connection thrown away, clients
that hang up, shutdown with rows still queued, and how failures are described. No database."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from structlog.testing import capture_logs

from jotc_api import recorder as recorder_module
from jotc_api.recorder import DatabaseUnavailable, Overloaded, Recorder, Row, describe_failure, insert_rows


def row(user: str = "ann", jumps: int = 1) -> Row:
    return Row(uuid.uuid4(), user, 3, 2, b"\x00", jumps)


class FakeConnection:
    def __init__(self, number: int, *, fail_invalidate: bool = False) -> None:
        self.number = number
        self.invalidated = False
        self.closed = False
        self.fail_invalidate = fail_invalidate
        self.driver = FakeDriver(None)
        self.lookups = 0  # of the psycopg connection underneath

    async def invalidate(self) -> None:
        if self.fail_invalidate:
            raise OSError("already gone")
        self.invalidated = True

    async def close(self) -> None:
        self.closed = True

    async def get_raw_connection(self) -> Any:
        self.lookups += 1
        return RawConnection(self.driver)


class FakeEngine:
    def __init__(self, **options: Any) -> None:
        self.connections: list[FakeConnection] = []
        self.options = options

    async def connect(self) -> FakeConnection:
        connection = FakeConnection(len(self.connections) + 1, **self.options)
        self.connections.append(connection)
        return connection


class Statement:
    """insert_rows replaced: records each batch; raises what ``fail`` says for a batch."""

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail: Any = None

    async def __call__(self, connection: FakeConnection, rows: list[Row]) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        failure = self.fail(rows) if self.fail else None
        if failure is not None:
            raise failure
        self.batches.append(rows)


@pytest.fixture
def statement(monkeypatch: pytest.MonkeyPatch) -> Statement:
    fake = Statement()
    monkeypatch.setattr(recorder_module, "insert_rows", fake)
    return fake


def make(engine: FakeEngine, *, max_batch: int = 10, writers: int = 1, max_pending: int = 100) -> Recorder:
    return Recorder(engine, max_batch=max_batch, writers=writers, max_pending=max_pending, write_timeout=5)  # type: ignore[arg-type]


async def test_rows_queued_together_are_written_in_batches_of_max_batch(statement: Statement) -> None:
    engine = FakeEngine()
    recorder = make(engine, max_batch=3)
    rows = [row(jumps=i) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*(recorder.record(r) for r in rows)), timeout=5)
    assert [len(batch) for batch in statement.batches] == [3, 2]
    assert [r for batch in statement.batches for r in batch] == rows
    assert len(engine.connections) == 1, "a writer keeps its connection from batch to batch"
    await recorder.close(timeout=5)
    assert engine.connections[0].closed


async def test_close_writes_what_is_queued_before_the_writer_stops(statement: Statement) -> None:
    recorder = make(FakeEngine(), max_batch=10)
    rows = [row(jumps=i) for i in range(3)]
    waiting = [asyncio.create_task(recorder.record(r)) for r in rows]
    closing = asyncio.create_task(recorder.close(timeout=5))  # queues the stop behind the three rows
    with capture_logs() as logs:
        await asyncio.wait_for(closing, timeout=5)
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=5)
    assert statement.batches == [rows], "the stop met mid-batch waits its turn: the rows go first"
    assert [entry["event"] for entry in logs] == ["recorder drained"]
    with pytest.raises(DatabaseUnavailable, match="shutting down"):
        await recorder.record(row())


async def test_a_full_queue_refuses_at_once_with_overloaded(statement: Statement) -> None:
    statement.gate = asyncio.Event()
    recorder = make(FakeEngine(), max_pending=1)
    in_flight = asyncio.create_task(recorder.record(row()))
    await asyncio.wait_for(statement.entered.wait(), timeout=5)  # the writer holds the first row
    queued = asyncio.create_task(recorder.record(row()))  # fills the queue
    await asyncio.sleep(0)  # let it queue (a yield, not a wait on time)
    with pytest.raises(Overloaded):
        await recorder.record(row())
    statement.gate.set()
    await asyncio.wait_for(asyncio.gather(in_flight, queued), timeout=5)
    await recorder.close(timeout=5)


async def test_one_bad_row_costs_only_itself(statement: Statement) -> None:
    bad = row(user="bad")
    statement.fail = lambda rows: IntegrityError("INSERT", None, Exception("check violated")) if bad in rows else None
    recorder = make(FakeEngine())
    good1, good2 = row(jumps=1), row(jumps=2)
    with capture_logs():
        results = await asyncio.wait_for(
            asyncio.gather(*(recorder.record(r) for r in (good1, bad, good2)), return_exceptions=True), timeout=5
        )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], DatabaseUnavailable)
    assert "constraint" in str(results[1])
    assert statement.batches == [[good1], [good2]], "the rejected batch is written again row by row"
    await recorder.close(timeout=5)


async def test_a_failed_batch_is_503_for_all_its_rows_and_its_connection_is_thrown_away(statement: Statement) -> None:
    engine = FakeEngine()
    statement.fail = lambda rows: OperationalError("INSERT", None, Exception("server closed the connection"))
    recorder = make(engine)
    with capture_logs() as logs:
        results = await asyncio.wait_for(
            asyncio.gather(recorder.record(row()), recorder.record(row()), return_exceptions=True), timeout=5
        )
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert str(results[0]) == "PostgreSQL is unavailable", "the client is told the role, not the driver's words"
    assert [line["reason"] for line in logs] == ["server closed the connection"], "those go to the log, once"
    assert engine.connections[0].invalidated
    assert engine.connections[0].closed
    statement.fail = None
    await asyncio.wait_for(recorder.record(row()), timeout=5)
    assert len(engine.connections) == 2, "the next batch connects afresh: recovery needs no restart"
    await recorder.close(timeout=5)


async def test_a_connection_that_cannot_even_be_invalidated_is_dropped_quietly(statement: Statement) -> None:
    engine = FakeEngine(fail_invalidate=True)
    statement.fail = lambda rows: OSError("network unreachable")
    recorder = make(engine)
    with capture_logs() as logs, pytest.raises(DatabaseUnavailable, match=r"^PostgreSQL is unavailable$"):
        await asyncio.wait_for(recorder.record(row()), timeout=5)
    assert [line["reason"] for line in logs] == ["network unreachable"]
    await recorder.close(timeout=5)


async def test_a_client_that_hangs_up_does_not_stop_its_row_or_the_answers_of_others(statement: Statement) -> None:
    statement.gate = asyncio.Event()
    recorder = make(FakeEngine())
    leaving = asyncio.create_task(recorder.record(row(user="leaves")))
    staying = asyncio.create_task(recorder.record(row(user="stays")))
    await asyncio.wait_for(statement.entered.wait(), timeout=5)
    leaving.cancel()
    statement.gate.set()
    await asyncio.wait_for(staying, timeout=5)
    assert [r.user for r in statement.batches[0]] == ["leaves", "stays"], "the row stays in its batch"
    assert leaving.cancelled()

    # The same when the batch fails: the cancelled request is not answered, the other gets its 503.
    statement.gate = asyncio.Event()
    statement.entered.clear()
    statement.fail = lambda rows: OSError("gone")
    leaving = asyncio.create_task(recorder.record(row()))
    staying = asyncio.create_task(recorder.record(row()))
    await asyncio.wait_for(statement.entered.wait(), timeout=5)
    leaving.cancel()
    statement.gate.set()
    with capture_logs(), pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(staying, timeout=5)
    await recorder.close(timeout=5)


async def test_close_past_its_timeout_stops_the_writers_and_fails_what_is_still_queued(statement: Statement) -> None:
    statement.gate = asyncio.Event()  # never opened: the database hangs
    recorder = make(FakeEngine(), max_batch=1)
    in_flight = asyncio.create_task(recorder.record(row()))
    await asyncio.wait_for(statement.entered.wait(), timeout=5)
    queued = asyncio.create_task(recorder.record(row()))
    await asyncio.sleep(0)  # let it queue
    with capture_logs() as logs:
        await asyncio.wait_for(recorder.close(timeout=0), timeout=5)
    with pytest.raises(DatabaseUnavailable, match="stopped before this row was written"):
        await queued
    assert logs[-1]["event"] == "recorder stopped before draining"
    assert logs[-1]["rows_not_written"] == 1
    assert not in_flight.done(), "the row in flight when the writer was cancelled has no answer"
    in_flight.cancel()


def test_failures_are_described_in_one_line() -> None:
    assert describe_failure(TimeoutError()) == "PostgreSQL did not answer in time"
    wrapped = OperationalError("SELECT", None, psycopg.OperationalError("connection refused\nIs the server running?"))
    assert describe_failure(wrapped) == "connection refused"
    assert describe_failure(DBAPIError("SELECT", None, None)).startswith("(builtins.NoneType)")  # type: ignore[arg-type]
    assert describe_failure(OSError()) == "OSError"


class FakePgConn:
    """libpq's side of a fake connection: a real socket, whose other end stands for the server."""

    def __init__(self) -> None:
        self.ours, self.servers = socket.socketpair()

    @property
    def socket(self) -> int:
        return self.ours.fileno()


class FakeDriver:
    def __init__(self, failure: Exception | None) -> None:
        self.autocommit = False
        self.closed = False
        self.pgconn = FakePgConn()
        self.failure = failure
        self.executed: list[dict[str, Any]] = []
        self.statements: list[str] = []

    def hang_up(self) -> None:
        """The server ends the session while the connection is idle (a pooler's restart)."""
        self.pgconn.servers.close()

    async def set_autocommit(self, value: bool) -> None:
        self.autocommit = value

    async def execute(self, statement: str, parameters: dict[str, Any]) -> None:
        if self.failure is not None:
            raise self.failure
        self.statements.append(statement)
        self.executed.append(parameters)


class RawConnection:
    """What SQLAlchemy's get_raw_connection() gives: the pool's record of a psycopg connection."""

    def __init__(self, driver: FakeDriver) -> None:
        self.driver_connection = driver


async def test_a_writer_connects_once_in_autocommit_and_keeps_its_connection() -> None:
    engine = FakeEngine()
    recorder = make(engine)
    for _ in range(3):
        await recorder.record(row())
    await recorder.close(timeout=5)
    (connection,) = engine.connections
    assert connection.lookups == 1, "the psycopg connection is looked up once, not per batch"
    assert connection.driver.autocommit is True
    assert len(connection.driver.executed) == 3, "three batches, one connection"
    assert connection.closed


async def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_batch_is_sent() -> None:
    engine = FakeEngine()
    recorder = make(engine)
    await recorder.record(row("before"))
    (first,) = engine.connections
    first.driver.hang_up()
    with capture_logs() as logs:
        await recorder.record(row("after"))  # recorded, not refused
    await recorder.close(timeout=5)
    assert len(first.driver.executed) == 1, "nothing was sent on the closed connection"
    assert first.invalidated, "the closed connection is thrown away"
    assert len(engine.connections) == 2
    assert len(engine.connections[1].driver.executed) == 1
    assert [line["event"] for line in logs if "closed by the server" in line["event"]]


async def test_a_batch_past_its_deadline_is_503_and_the_next_batch_connects_afresh(statement: Statement) -> None:
    engine = FakeEngine()
    recorder = Recorder(engine, max_batch=10, writers=1, max_pending=100, write_timeout=0.05)  # type: ignore[arg-type]
    statement.gate = asyncio.Event()  # the statement never returns
    with pytest.raises(DatabaseUnavailable, match="did not answer in time"):
        await recorder.record(row("late"))
    assert engine.connections[0].invalidated, "a connection mid-statement is never reused"
    statement.gate.set()
    await recorder.record(row("next"))
    assert len(engine.connections) == 2
    await recorder.close(timeout=5)


async def test_connect_puts_the_psycopg_connection_in_autocommit() -> None:
    link = await recorder_module.connect(FakeEngine())  # type: ignore[arg-type]
    assert link.driver.autocommit is True, "each batch statement is its own transaction"


async def test_a_connection_whose_psycopg_connection_cannot_be_reached_is_thrown_away() -> None:
    class Unreachable(FakeConnection):
        async def get_raw_connection(self) -> Any:
            raise OSError("connection lost")

    class Engine(FakeEngine):
        async def connect(self) -> FakeConnection:
            self.connections.append(Unreachable(1))
            return self.connections[-1]

    engine = Engine()
    with pytest.raises(OSError, match="connection lost"):
        await recorder_module.connect(engine)  # type: ignore[arg-type]
    assert engine.connections[0].invalidated
    assert engine.connections[0].closed


async def test_insert_rows_sends_a_batch_of_one_as_plain_values() -> None:
    driver = FakeDriver(None)
    one = row("ann", 1)
    await insert_rows(driver, [one])  # type: ignore[arg-type]
    assert driver.statements == [recorder_module.RECORD_ONE]
    assert driver.executed == [{"ids": one.id, "users": "ann", "ns": 3, "max_jumps": 2, "clouds": b"\x00", "jumps": 1}]


async def test_insert_rows_sends_one_statement_with_a_column_per_array() -> None:
    driver = FakeDriver(None)
    rows = [row("ann", 1), row("bob", 2)]
    await insert_rows(driver, rows)  # type: ignore[arg-type]
    assert driver.statements == [recorder_module.RECORD_BATCH]
    assert driver.executed == [
        {
            "ids": [r.id for r in rows],
            "users": ["ann", "bob"],
            "ns": [3, 3],
            "max_jumps": [2, 2],
            "clouds": [b"\x00", b"\x00"],
            "jumps": [1, 2],
        }
    ]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (psycopg.errors.CheckViolation("check"), IntegrityError),
        (psycopg.errors.NumericValueOutOfRange("big"), DataError),
    ],
)
async def test_insert_rows_turns_psycopg_rejections_into_sqlalchemy_ones(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected):
        await insert_rows(FakeDriver(raised), [row()])  # type: ignore[arg-type]
