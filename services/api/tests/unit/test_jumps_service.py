"""The jumps service in process, its database replaced: query strings, solving off the event loop,
the recorder's refusals as problems, replaying an idempotent answer from its record (or 410 once
erased), and reading a record while PostgreSQL is down. No database, no server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import anyio.to_thread
import msgspec
import pytest
from sqlalchemy.exc import OperationalError

from jotc_api import jumps
from jotc_api.memory import clouds_cost
from jotc_api.parsing import JumpInput
from jotc_api.queries import RecordedRequest, find_request
from jotc_api.recorder import DatabaseUnavailable, Overloaded, Row
from jotc_api.solver import Solution, solve
from jotc_api.tables import pack_clouds

CLOUDS = bytes([0, 0, 1, 0, 0, 1, 0])  # HackerRank's sample: 4 jumps
RECORD_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RECORDED = RecordedRequest(RECORD_ID, "ann", len(CLOUDS), 2, pack_clouds(CLOUDS), 4, CREATED)


class Recorder:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.rows: list[Row] = []

    async def record(self, row: Row) -> None:
        if self.failure is not None:
            raise self.failure
        self.rows.append(row)


def state(recorder: Recorder | None = None, offload_from: int = 50_000) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(offload_from=offload_from, max_clouds=5000),
        recorder=recorder or Recorder(),
        engine=object(),
    )


def test_an_empty_query_is_no_parameters() -> None:
    assert jumps.parse_query(b"") == {}
    assert jumps.parse_query(b"user=ann&max_jump=3") == {"user": "ann", "max_jump": "3"}


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"user=\xff", 400, "not valid UTF-8; percent-encode it"),
        (b"user=%ff", 400, "percent-escapes are not valid UTF-8"),
        (b"user=a&user=b", 422, "given more than once"),
    ],
)
def test_a_query_string_that_cannot_be_read_one_way_is_refused(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(jumps.Problem) as refused:
        jumps.parse_query(raw)
    assert refused.value.status == status
    assert words in refused.value.detail


async def test_a_large_input_is_solved_on_a_worker_thread_with_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def recording(function: Any, *args: Any) -> Any:
        threads.append(function)
        return await run_sync(function, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    assert await jumps.solve_without_stalling(CLOUDS, 2, offload_from=8) == solve(CLOUDS, 2)
    assert threads == [], "7 clouds, under offload_from: solved inline"
    offloaded = await jumps.solve_without_stalling(CLOUDS, 2, offload_from=2)
    assert threads == [solve]
    assert offloaded == solve(CLOUDS, 2)
    assert isinstance(offloaded, Solution)
    assert offloaded.jumps == 4


async def test_a_solved_request_is_recorded_as_its_packed_row() -> None:
    recorder = Recorder()
    request_id, solution = await jumps.solve_and_record(state(recorder), JumpInput(CLOUDS, "ann", 2))
    assert solution.jumps == 4
    assert recorder.rows == [Row(request_id, "ann", 7, 2, pack_clouds(CLOUDS), 4)]
    assert request_id.version == 7, "ids are UUIDv7: time-ordered"


@pytest.mark.parametrize(
    ("failure", "kind"),
    [(Overloaded("queue full"), "overloaded"), (DatabaseUnavailable("connection refused"), "database-unavailable")],
)
async def test_the_recorders_refusals_are_503_problems(failure: Exception, kind: str) -> None:
    with pytest.raises(jumps.Problem) as refused:
        await jumps.solve_and_record(state(Recorder(failure)), JumpInput(CLOUDS, "ann", 2))
    assert (refused.value.status, refused.value.kind) == (503, kind)
    assert refused.value.headers["Retry-After"]
    if kind == "database-unavailable":
        assert "connection refused" in refused.value.detail


async def test_an_unreachable_last_cloud_is_422_and_nothing_is_recorded() -> None:
    recorder = Recorder()
    with pytest.raises(jumps.Problem) as refused:
        await jumps.solve_and_record(state(recorder), JumpInput(bytes([0, 1, 1, 0]), "ann", 2))
    assert (refused.value.status, refused.value.kind, refused.value.blocked_at) == (422, "unreachable", 1)
    assert recorder.rows == []


def finding(monkeypatch: pytest.MonkeyPatch, outcome: RecordedRequest | Exception | None) -> list[uuid.UUID]:
    asked: list[uuid.UUID] = []

    async def fake(engine: Any, request_id: uuid.UUID) -> RecordedRequest | None:
        asked.append(request_id)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(jumps, "find_request", fake)
    return asked


async def test_replays_are_rebuilt_from_the_recorded_request(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = finding(monkeypatch, RECORDED)
    jotc = await jumps.replay_jotc(state(), jumps.JSON, str(RECORD_ID))
    assert (jotc.status, jotc.record, jotc.owner) == (200, str(RECORD_ID), "ann")
    assert msgspec.json.decode(jotc.body) == {
        "moves": [{"from": 0, "to": 1}, {"from": 1, "to": 3}, {"from": 3, "to": 4}, {"from": 4, "to": 6}],
        "total": 4,
    }
    text = await jumps.replay_jumps(state(), jumps.TEXT, str(RECORD_ID))
    assert (text.status, text.body, text.location) == (201, b"4\n", f"/jumps/{RECORD_ID}")
    assert asked == [RECORD_ID, RECORD_ID]


async def test_a_replay_of_an_erased_request_is_410(monkeypatch: pytest.MonkeyPatch) -> None:
    finding(monkeypatch, None)
    with pytest.raises(jumps.Problem) as refused:
        await jumps.replay_jumps(state(), jumps.JSON, str(RECORD_ID))
    assert (refused.value.status, refused.value.kind) == (410, "erased")


async def test_a_replay_while_postgresql_is_down_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    finding(monkeypatch, OperationalError("SELECT", None, Exception("connection refused")))
    with pytest.raises(jumps.Problem) as refused:
        await jumps.replay_jotc(state(), jumps.JSON, str(RECORD_ID))
    assert (refused.value.status, refused.value.kind) == (503, "database-unavailable")
    assert "kept answer could not be rebuilt" in refused.value.detail


async def test_reading_a_record_while_postgresql_is_down_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    charged: list[int] = []
    finding(monkeypatch, OperationalError("SELECT", None, Exception("connection refused")))
    with pytest.raises(jumps.Problem) as refused:
        await jumps.read_jump(object(), str(RECORD_ID), 50_000, charged.append)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (503, "database-unavailable")


async def test_reading_a_record_gives_its_clouds_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    finding(monkeypatch, RECORDED)
    charged: list[int] = []

    async def charge(cost: int) -> None:
        charged.append(cost)

    record = await jumps.read_jump(object(), str(RECORD_ID), 50_000, charge)  # type: ignore[arg-type]
    assert (record.clouds, record.path, record.jumps) == (list(CLOUDS), [0, 1, 3, 4, 6], 4)
    assert charged == [clouds_cost(len(CLOUDS))], "its clouds are charged before the answer is rebuilt"
    assert record.created_at == "2026-01-02T03:04:05+00:00"


@pytest.mark.parametrize("spelling", [str(RECORD_ID).upper(), RECORD_ID.hex, f"{{{RECORD_ID}}}", "not-an-id"])
async def test_only_the_canonical_spelling_of_an_id_names_a_record(
    spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = finding(monkeypatch, RECORDED)
    charged: list[int] = []
    with pytest.raises(jumps.Problem) as refused:
        await jumps.read_jump(object(), spelling, 50_000, charged.append)  # type: ignore[arg-type]
    assert refused.value.status == 404
    assert asked == [], "the database is not asked"


class Result:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row

    def first(self) -> tuple[Any, ...] | None:
        return self.row


class Connection:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row
        self.statements: list[Any] = []

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, statement: Any) -> Result:
        self.statements.append(statement)
        return Result(self.row)


class Engine:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.connection = Connection(row)

    def connect(self) -> Connection:
        return self.connection


async def test_find_request_returns_the_row_as_a_record_or_none() -> None:
    row = (RECORD_ID, "ann", 7, 2, pack_clouds(CLOUDS), 4, CREATED)
    engine = Engine(row)
    assert await find_request(engine, RECORD_ID) == RECORDED  # type: ignore[arg-type]
    compiled = engine.connection.statements[0].compile()
    assert compiled.params == {"id_1": RECORD_ID}, "one row, looked up by its id"
    assert await find_request(Engine(None), RECORD_ID) is None  # type: ignore[arg-type]
