"""Erasure's chunk logic against a fake database that answers erasure.py's statements: keyset chunks
then the sweep, statistics subtracted or dropped, the job's lease held by another runner or lost
mid-job, a failure mid-chunk throwing the connection away, and the background runner finishing what
outlives its request. The SQL itself runs against PostgreSQL in the integration and system tiers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from jotc_api import erasure
from jotc_api.erasure import Eraser, ErasureJob, Pace, recorded_ids, run_job, start_job

CUTOFF = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Result:
    def __init__(self, value: Any) -> None:
        self.value = value

    def first(self) -> Any:
        return self.value

    def one(self) -> Any:
        assert self.value is not None
        return self.value

    def scalar_one(self) -> Any:
        return self.value

    def scalar_one_or_none(self) -> Any:
        return self.value

    def scalars(self) -> Any:
        return iter(self.value)


class Transaction:
    def __init__(self, database: FakeDatabase) -> None:
        self.database = database

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, failure: type[BaseException] | None, *_: object) -> None:
        if failure is not None:
            self.database.rolled_back.append(failure.__name__)


class FakeDatabase:
    """One user's rows up to the cutoff (``rows``; ``late`` more found only by the sweep), their
    statistics row (``stats``, None when absent) and erasure job (None, running or done)."""

    def __init__(self, rows: int, stats: int | None, *, late: int = 0, state: str | None = "running") -> None:
        self.rows, self.late, self.stats = rows, late, stats
        self.state, self.deleted = state, 0
        self.user = "ann"
        self.locked_elsewhere = False  # another runner holds the job's lease (or its chunk lock)
        self.runner: Any = None  # the runner whose lease the job's row names
        self.lease_lost = False  # another runner took the job over while this one rested
        self.rolled_back: list[str] = []
        self.fail_on: Any = None
        self.log: list[str] = []
        self.invalidated = 0
        self.running_asked = asyncio.Event()

    def job_row(self, user: str) -> tuple[Any, ...] | None:
        if self.state is None:
            return None
        finished = CUTOFF if self.state == "done" else None
        return (user, self.state, self.deleted, CUTOFF, CUTOFF, CUTOFF, finished)

    def answer(self, statement: Any, parameters: dict[str, Any]) -> Any:
        name = next(key for key, value in vars(erasure).items() if value is statement and key.isupper())
        self.log.append(name)
        if self.fail_on == name:
            raise OperationalError(name, None, Exception("server closed the connection unexpectedly"))
        if name == "CLAIM":
            if self.state != "running" or self.locked_elsewhere or self.runner not in (None, parameters["runner"]):
                return None
            self.runner = parameters["runner"]
            return self.job_row(parameters["user"])
        if name == "RELEASE" and self.runner == parameters["runner"]:
            self.runner = None
        if name == "CHUNK_LOCK":
            return not self.locked_elsewhere
        if name == "RUNNING":
            self.running_asked.set()
            return [self.user] if self.state == "running" else []
        if name == "START":
            if self.state == "running":
                return None
            self.state, self.deleted = "running", 0
            return self.job_row(parameters["user"])
        if name == "READ":
            return self.job_row(parameters["user"])
        if name == "DELETE_CHUNK":
            gone = min(self.rows, parameters["rows"])
            self.rows -= gone
            return (gone, CUTOFF, uuid.uuid4()) if gone else (0, None, None)
        if name == "SWEEP_CHUNK":
            gone = min(self.late, parameters["rows"])
            self.late -= gone
            return (gone, None, None)
        if name == "LOCK_STATS":
            return self.stats
        if name == "SUBTRACT":
            assert self.stats is not None
            self.stats -= parameters["deleted"]
        elif name == "DROP_STATS":
            self.stats = None
        elif name == "PROGRESS":
            if self.lease_lost or self.runner != parameters["runner"]:
                return None
            self.deleted += parameters["deleted"]
            if parameters["last"]:
                self.state, self.runner = "done", None
            return self.job_row(parameters["user"])
        return None


class FakeConnection:
    def __init__(self, database: FakeDatabase) -> None:
        self.database = database

    async def __aenter__(self) -> FakeConnection:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> Result:
        return Result(self.database.answer(statement, parameters or {}))

    def begin(self) -> Transaction:
        return Transaction(self.database)

    async def commit(self) -> None:
        return None

    async def invalidate(self) -> None:
        self.database.invalidated += 1


class FakeEngine:
    def __init__(self, database: FakeDatabase) -> None:
        self.database = database

    def connect(self) -> FakeConnection:
        return FakeConnection(self.database)

    def begin(self) -> FakeConnection:
        return FakeConnection(self.database)


async def test_an_erasure_runs_keyset_chunks_then_the_sweep_and_subtracts_from_the_statistics() -> None:
    database = FakeDatabase(rows=12, stats=15, late=1)  # 15 requests: 13 up to the cutoff, 2 after it
    job = await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=5))  # type: ignore[arg-type]
    assert job is not None
    assert job.done
    assert job.deleted == 13
    assert database.stats == 2, "the requests made after the cutoff are kept, and counted"
    chunks = [entry for entry in database.log if entry in {"DELETE_CHUNK", "SWEEP_CHUNK", "FORGET_EARLIER"}]
    assert chunks == ["DELETE_CHUNK"] * 3 + ["SWEEP_CHUNK", "FORGET_EARLIER"], "5, 5, 2 (short: the sweep next), 1"
    assert database.log.count("CHUNK_LOCK") == 4, "every chunk's transaction takes the user's lock"
    assert (database.log[-1], database.runner) == ("PROGRESS", None), "the last chunk ends the lease"


async def test_the_runner_rests_after_each_chunk_so_it_works_its_share_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    rests: list[float] = []
    chunk = erasure.erase_chunk

    async def taking_a_tenth_of_a_second(*args: Any) -> Any:
        clock[0] += 0.1
        return await chunk(*args)

    async def rest(seconds: float) -> None:
        rests.append(seconds)
        clock[0] += seconds

    # erasure.py's own names for the clock and the sleep, not the process-wide ones the event loop uses.
    monkeypatch.setattr(erasure, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(erasure, "asyncio", SimpleNamespace(sleep=rest))
    monkeypatch.setattr(erasure, "erase_chunk", taking_a_tenth_of_a_second)
    database = FakeDatabase(rows=12, stats=12)
    job = await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=5, busy_share=0.25))  # type: ignore[arg-type]
    assert job is not None
    assert job.done
    # Chunks of 5, 5, 2 and the sweep: a rest of three times the chunk's 0.1 s after each but the last.
    assert rests == pytest.approx([0.3, 0.3, 0.3])
    assert clock[0] == pytest.approx(0.4 + 0.9)

    # Within a request's time (seconds=): the rest ends at the deadline, and so does the work.
    rests.clear()
    clock[0] = 0.0
    database = FakeDatabase(rows=12, stats=12)
    pace = Pace(chunk_rows=5, busy_share=0.25)
    job = await run_job(FakeEngine(database), "ann", pace=pace, seconds=0.65)  # type: ignore[arg-type]
    assert job is not None
    assert not job.done, "what is left is the background runner's"
    assert rests == pytest.approx([0.3, 0.15]), "the second rest is cut to the 0.65 s deadline"
    assert clock[0] == pytest.approx(0.65)
    assert (database.log[-1], database.runner) == ("RELEASE", None), "the background need not wait for the lease"


async def test_a_runner_given_its_whole_time_never_rests() -> None:
    assert Pace(busy_share=1).rest_after(5.0) == 0
    assert Pace(busy_share=0.5).rest_after(0.2) == pytest.approx(0.2)


async def test_a_user_left_with_nothing_loses_the_statistics_row() -> None:
    database = FakeDatabase(rows=4, stats=4)
    job = await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=10))  # type: ignore[arg-type]
    assert job is not None
    assert job.done
    assert job.deleted == 4
    assert database.stats is None
    assert "DROP_STATS" in database.log
    assert "SUBTRACT" not in database.log


async def test_a_user_without_a_statistics_row_is_erased_all_the_same() -> None:
    database = FakeDatabase(rows=3, stats=None)
    job = await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=10))  # type: ignore[arg-type]
    assert job is not None
    assert job.done
    assert job.deleted == 3
    assert "SUBTRACT" not in database.log
    assert "DROP_STATS" not in database.log


async def test_a_job_another_process_holds_is_left_to_it() -> None:
    database = FakeDatabase(rows=3, stats=3)
    database.locked_elsewhere = True
    assert await run_job(FakeEngine(database), "ann") is None  # type: ignore[arg-type]
    assert database.log == ["CLAIM"]
    assert database.rows == 3


async def test_a_runner_that_lost_its_lease_rolls_its_chunk_back_and_stops() -> None:
    database = FakeDatabase(rows=12, stats=12)
    deletes = 0
    answer = database.answer

    def taken_over_after_the_first_chunk(statement: Any, parameters: dict[str, Any]) -> Any:
        nonlocal deletes
        if statement is erasure.DELETE_CHUNK:
            deletes += 1
            database.lease_lost = deletes == 2  # it stalled past its lease; another runner took the job
        return answer(statement, parameters)

    database.answer = taken_over_after_the_first_chunk  # type: ignore[method-assign]
    assert await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=5, busy_share=1)) is None  # type: ignore[arg-type]
    assert database.deleted == 5, "only the first chunk's progress counts"
    assert database.rolled_back == ["LeaseLost"], "the second chunk's deletes are rolled back"
    assert "RELEASE" not in database.log, "the lease is the other runner's now"


async def test_a_chunk_whose_lock_another_runner_holds_is_not_run() -> None:
    database = FakeDatabase(rows=12, stats=12)
    answer = database.answer

    def previous_release_runner_starts(statement: Any, parameters: dict[str, Any]) -> Any:
        found = answer(statement, parameters)
        if statement is erasure.CLAIM:
            database.locked_elsewhere = True  # a runner of the previous release takes the session lock now
        return found

    database.answer = previous_release_runner_starts  # type: ignore[method-assign]
    assert await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=5)) is None  # type: ignore[arg-type]
    assert "DELETE_CHUNK" not in database.log
    assert database.rows == 12
    assert (database.log[-1], database.runner) == ("RELEASE", None), "given back, for whoever looks next"


async def test_a_job_that_is_gone_is_nothing_to_run() -> None:
    database = FakeDatabase(rows=0, stats=None, state=None)
    assert await run_job(FakeEngine(database), "ann") is None  # type: ignore[arg-type]
    assert database.log == ["CLAIM"]


async def test_a_failure_mid_chunk_throws_the_connection_away_and_leaves_the_lease_to_expire() -> None:
    database = FakeDatabase(rows=12, stats=12)
    database.fail_on = "LOCK_STATS"
    with pytest.raises(OperationalError):
        await run_job(FakeEngine(database), "ann", pace=Pace(chunk_rows=5))  # type: ignore[arg-type]
    assert database.invalidated == 1, "the connection may be mid-statement: it goes"
    assert database.rolled_back == ["OperationalError"]
    assert "RELEASE" not in database.log
    assert database.runner is not None, "another runner takes the job over once the lease expires"


async def test_asking_again_while_an_erasure_runs_returns_the_running_job() -> None:
    database = FakeDatabase(rows=3, stats=3, state="running")
    job = await start_job(FakeEngine(database), "ann")  # type: ignore[arg-type]
    assert (job.state, database.log) == ("running", ["MOVE_UNMARKED", "START", "READ"])


async def test_the_runner_finishes_in_the_background_what_outlives_its_request() -> None:
    database = FakeDatabase(rows=7, stats=7, state="done")  # a finished erasure: asking again starts afresh
    finished = asyncio.Event()
    finished_users: list[str] = []

    async def on_finished(user: str) -> None:
        finished_users.append(user)
        finished.set()

    eraser = Eraser(FakeEngine(database), on_finished, pace=Pace(chunk_rows=5), poll_seconds=3600)  # type: ignore[arg-type]
    await asyncio.wait_for(database.running_asked.wait(), timeout=5)  # its first look, at start-up
    with capture_logs() as logs:
        job = await eraser.erase("ann", seconds=0)  # no time in the request: everything is left
        assert (job.state, job.deleted) == ("running", 0)
        await asyncio.wait_for(finished.wait(), timeout=5)
    assert finished_users == ["ann"]
    assert (database.state, database.deleted, database.stats) == ("done", 7, None)
    assert {"event": "erasure finished", "deleted": 7, "log_level": "info"} in logs
    await eraser.close()


async def test_an_erasure_done_in_its_request_is_returned_done(monkeypatch: pytest.MonkeyPatch) -> None:
    database = FakeDatabase(rows=0, stats=None, state="done")
    eraser = Eraser(FakeEngine(database), lambda user: asyncio.sleep(0), poll_seconds=3600)  # type: ignore[arg-type]

    async def already_done(engine: Any, user: str) -> ErasureJob:
        # START found the job running, and it finished before READ: another worker's runner was faster.
        return ErasureJob(user, "done", 9, CUTOFF, CUTOFF, CUTOFF, CUTOFF)

    monkeypatch.setattr(erasure, "start_job", already_done)
    job = await eraser.erase("ann")
    assert (job.state, job.deleted) == ("done", 9)
    assert not eraser._wake.is_set(), "nothing is left for the background"
    await eraser.close()


@pytest.mark.parametrize(
    ("failure", "event"),
    [
        (
            OperationalError("SELECT", None, Exception("connection refused\ndetail")),
            "erasure runner: database unavailable; retrying",
        ),
        (RuntimeError("a bug"), "erasure runner failed; retrying"),
    ],
)
async def test_the_runner_survives_failures_and_tries_again(failure: Exception, event: str) -> None:
    database = FakeDatabase(rows=2, stats=2)
    calls = 0

    async def running_users(engine: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise failure
        database.running_asked.set()
        return []

    with pytest.MonkeyPatch.context() as patch, capture_logs() as logs:
        patch.setattr(erasure, "running_users", running_users)
        eraser = Eraser(FakeEngine(database), lambda user: asyncio.sleep(0), poll_seconds=3600)  # type: ignore[arg-type]
        eraser._wake.set()  # as an erasure request would
        await asyncio.wait_for(database.running_asked.wait(), timeout=5)
        await eraser.close()
    assert calls == 2
    assert logs[0]["event"] == event
    if isinstance(failure, OperationalError):
        assert "\n" not in logs[0]["error"], "one line in the log"


async def test_the_runner_leaves_a_job_another_process_holds_and_reports_nothing() -> None:
    database = FakeDatabase(rows=2, stats=2)  # running, but locked by another worker's runner
    database.locked_elsewhere = True
    finished: list[str] = []

    async def on_finished(user: str) -> None:
        finished.append(user)

    with capture_logs() as logs:
        eraser = Eraser(FakeEngine(database), on_finished, poll_seconds=3600)  # type: ignore[arg-type]
        await asyncio.wait_for(database.running_asked.wait(), timeout=5)
        database.running_asked.clear()
        eraser._wake.set()  # a second look finds it held still
        await asyncio.wait_for(database.running_asked.wait(), timeout=5)
        await eraser.close()
    assert finished == []
    assert logs == []
    assert database.rows == 2


async def test_what_follows_an_erasure_done_in_its_request_runs_after_the_answer_and_retries() -> None:
    database = FakeDatabase(rows=3, stats=3, state="done")
    attempts: list[str] = []
    held = asyncio.Event()
    succeeded = asyncio.Event()

    async def on_finished(user: str) -> None:
        attempts.append(user)
        if len(attempts) == 1:
            await held.wait()  # the first attempt hangs until the answer is out, then fails
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6391. Connection refused.")
        succeeded.set()

    with capture_logs() as logs:
        eraser = Eraser(FakeEngine(database), on_finished, poll_seconds=0.01)  # type: ignore[arg-type]
        # The request's answer does not wait for what follows: it comes while the follow-up hangs.
        job = await asyncio.wait_for(eraser.erase("ann"), timeout=5)
        assert (job.state, job.deleted) == ("done", 3)
        held.set()
        await asyncio.wait_for(succeeded.wait(), timeout=5)  # failed once, tried again
        await eraser.close()
    assert attempts == ["ann", "ann"]
    failures = [entry for entry in logs if entry["event"] == "after an erasure: its follow-up failed; retrying"]
    assert len(failures) == 1
    assert "ann" not in str(failures), "the erased user's name stays out of the log"


async def test_a_follow_up_is_not_repeated_once_it_succeeded() -> None:
    database = FakeDatabase(rows=2, stats=2, state="done")
    done: list[str] = []

    async def on_finished(user: str) -> None:
        done.append(user)

    eraser = Eraser(FakeEngine(database), on_finished, poll_seconds=0.01)  # type: ignore[arg-type]
    await eraser.erase("ann")
    await asyncio.wait_for(_until(lambda: done == ["ann"]), timeout=5)
    database.running_asked.clear()
    await asyncio.wait_for(database.running_asked.wait(), timeout=5)  # the runner looked again, more than once
    database.running_asked.clear()
    await asyncio.wait_for(database.running_asked.wait(), timeout=5)
    await eraser.close()
    assert done == ["ann"]


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def test_ids_that_are_not_a_requests_are_not_recorded_and_cost_no_query() -> None:
    database = FakeDatabase(rows=0, stats=None)
    assert await recorded_ids(FakeEngine(database), ["not-a-uuid", ""]) == set()  # type: ignore[arg-type]
    assert database.log == []


async def test_close_stops_the_runner_even_when_a_follow_up_swallows_the_cancellation() -> None:
    database = FakeDatabase(rows=1, stats=1, state="done")
    started = asyncio.Event()

    async def swallowing(user: str) -> None:
        # As a client library whose own timeout meets the cancellation: it reports a timeout instead.
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError("timed out") from None

    eraser = Eraser(FakeEngine(database), swallowing, poll_seconds=3600)  # type: ignore[arg-type]
    await eraser.erase("ann")
    await asyncio.wait_for(started.wait(), timeout=5)
    await asyncio.wait_for(eraser.close(), timeout=5)
