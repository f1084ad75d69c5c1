"""The admin and operations handlers called directly (their functions, as Litestar would call them),
with the database replaced: PostgreSQL failing mid-request is 503, an erasure that outlives its
request is 202, a parameter given twice or a time without an offset is 422; /readyz on a newer,
compatible schema; the schema verdict's reads; the OpenAPI document's own operation classes. No
database, no server."""

from __future__ import annotations

import importlib.util
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import anyio.to_thread
import msgspec
import pytest
from litestar.datastructures import MultiDict
from sqlalchemy.exc import OperationalError

from jotc_api import openapi, readiness, schema_compat
from jotc_api.drain import DrainFlag
from jotc_api.erasure import ErasureJob, recorded_ids
from jotc_api.memory import MemoryBudget
from jotc_api.problems import Problem
from jotc_api.queries import ListedRequest
from jotc_api.readiness import DatabaseReadiness
from jotc_api.routes import admin, operations
from jotc_api.schema_compat import Verdict, schema_verdict
from jotc_api.tables import SCHEMA_REVISION, pack_clouds

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DOWN = OperationalError("SELECT", None, Exception("connection refused"))


def request(**state: Any) -> Any:
    defaults: dict[str, Any] = {
        "engine": object(),
        "settings": SimpleNamespace(offload_from=50_000, admin_page_cells=10),
        "memory": MemoryBudget(10**9),
    }
    return SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(**(defaults | state)))), scope={}
    )


async def failing_async(*_: Any, **__: Any) -> Any:
    raise DOWN


def status_of(problem: pytest.ExceptionInfo[Problem]) -> tuple[int, str]:
    return problem.value.status, problem.value.kind


# Query parameters, checked before any handler runs (the strict_query guard).


def guard(query: list[tuple[str, str]], handler: Any = admin.admin_requests) -> None:
    connection = SimpleNamespace(query_params=MultiDict(query), path_params={})
    admin.strict_query(connection, handler)  # type: ignore[arg-type]


def test_a_parameter_given_twice_is_422_naming_it() -> None:
    with pytest.raises(Problem) as refused:
        guard([("limit", "5"), ("limit", "6")])
    assert refused.value.status == 422
    assert [(e.field, e.message) for e in refused.value.errors or []] == [("limit", "given more than once")]


def test_declared_parameters_spelled_as_the_contract_says_pass_the_guard() -> None:
    guard([("limit", "5"), ("since", "2026-01-02T03:04:05Z"), ("user", "ann")])


async def test_times_without_an_offset_are_422_naming_each() -> None:
    with pytest.raises(Problem) as refused:
        await admin.admin_requests.fn(request(), since=datetime(2026, 1, 1), until=datetime(2026, 1, 2))
    assert status_of(refused) == (422, "validation")
    assert [e.field for e in refused.value.errors or []] == ["since", "until"]


@pytest.mark.parametrize("sort", ["requests", "last_request_at"])
async def test_a_stats_cursor_with_a_sort_that_does_not_page_is_refused(sort: str) -> None:
    cursor = admin.make_cursor("stats:user:desc", ["ann", "ann"])
    with pytest.raises(Problem) as refused:
        await admin.admin_stats.fn(request(), limit=10, cursor=cursor, sort=sort, order="desc")
    assert status_of(refused) == (422, "validation")
    assert [(e.field, e.message) for e in refused.value.errors or []] == [("cursor", admin.UNPAGED_SORT)]


async def test_stats_while_postgresql_is_down_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "read_totals", failing_async)
    with pytest.raises(Problem) as refused:
        await admin.admin_stats.fn(request(), limit=10, cursor=None, sort="requests", order="desc")
    assert status_of(refused) == (503, "database-unavailable")
    assert refused.value.headers["Retry-After"]


async def test_listing_while_postgresql_is_down_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "requests_page", failing_async)
    with pytest.raises(Problem) as refused:
        await admin.admin_requests.fn(request(), user=None, since=None, until=None, limit=10, cursor=None)
    assert status_of(refused) == (503, "database-unavailable")


async def test_a_listing_of_large_inputs_has_the_same_paths_computed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clouds = bytes([0, 0, 1, 0, 0, 1, 0])
    rows = [ListedRequest(uuid.UUID(int=1), "ann", 7, 2, pack_clouds(clouds), 4, NOW)]

    async def page(*_: Any, **__: Any) -> tuple[list[ListedRequest], bool]:
        return rows, True

    monkeypatch.setattr(admin, "requests_page", page)
    offloaded: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def recording(function: Any, *args: Any) -> Any:
        offloaded.append(function)
        return await run_sync(function, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    settings = SimpleNamespace(offload_from=2, admin_page_cells=10)  # 7 clouds >= 2: a worker thread
    listing = await admin.admin_requests.fn(
        request(settings=settings), user=None, since=None, until=None, limit=1, cursor=None
    )
    assert listing.items == admin.listed_items(rows)
    assert listing.items[0].path == [0, 1, 3, 4, 6]
    assert listing.next_cursor is not None
    assert admin.read_cursor(listing.next_cursor, "requests", []) == [NOW.isoformat(), str(uuid.UUID(int=1))]
    assert offloaded == [admin.listed_items], "the paths were computed on a worker thread"


def job(state: str, deleted: int = 0) -> ErasureJob:
    return ErasureJob("ann", state, deleted, NOW, NOW, NOW, NOW if state == "done" else None)


class Eraser:
    def __init__(self, outcome: ErasureJob | Exception) -> None:
        self.outcome = outcome

    async def erase(self, user: str) -> ErasureJob:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class Idempotency:
    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.recorded: Any = None

    async def forget_erased(self, user: str, recorded: Any) -> int:
        self.forgotten.append(user)
        self.recorded = recorded
        return 0


async def test_an_erasure_that_outlives_its_request_is_202_with_its_status() -> None:
    idempotency = Idempotency()
    state = {"eraser": Eraser(job("running", 5000)), "redis": SimpleNamespace(client=object())}
    response = await admin.admin_erase_user.fn(request(**state, idempotency=idempotency), user="ann")
    assert response.status_code == 202
    assert response.headers["Location"] == "/admin/erasures/ann"
    assert (response.content.state, response.content.deleted) == ("running", 5000)
    assert idempotency.forgotten == [], "keys are forgotten once the erasure is done, not before"


async def test_a_finished_erasure_is_200_and_leaves_the_users_keys_to_the_background() -> None:
    idempotency = Idempotency()
    state = {"eraser": Eraser(job("done", 3)), "redis": SimpleNamespace(client=object())}
    response = await admin.admin_erase_user.fn(request(**state, idempotency=idempotency), user=" ann ")
    assert response.status_code == 200
    assert response.content == admin.Erased("ann", 3)
    assert idempotency.forgotten == [], "the walk over the user's keys is the Eraser's, never the request's"


async def test_after_an_erasure_the_keys_are_judged_by_the_records_left() -> None:
    idempotency = Idempotency()
    engine = object()
    await admin.forget_erased(
        SimpleNamespace(redis=SimpleNamespace(client=object()), idempotency=idempotency, engine=engine), "ann"
    )
    assert idempotency.forgotten == ["ann"]
    assert idempotency.recorded.func is recorded_ids
    assert idempotency.recorded.args == (engine,)


async def test_without_redis_there_are_no_keys_to_forget() -> None:
    idempotency = Idempotency()
    await admin.forget_erased(SimpleNamespace(redis=SimpleNamespace(client=None), idempotency=idempotency), "ann")
    assert idempotency.forgotten == []


async def test_erasing_while_postgresql_is_down_is_503() -> None:
    with pytest.raises(Problem) as refused:
        await admin.admin_erase_user.fn(request(eraser=Eraser(DOWN)), user="ann")
    assert status_of(refused) == (503, "database-unavailable")


async def test_the_erasure_status_route(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Problem) as refused:
        await admin.admin_erasure.fn(request(), user="bad\x00name")
    assert status_of(refused) == (422, "validation")

    found: dict[str, ErasureJob | None] = {"ann": job("done", 3), "bob": None}

    async def read_job(engine: Any, user: str) -> ErasureJob | None:
        return found[user]

    monkeypatch.setattr(admin, "read_job", read_job)
    status = await admin.admin_erasure.fn(request(), user="ann")
    assert (status.state, status.deleted, status.finished_at) == ("done", 3, NOW.isoformat())
    with pytest.raises(Problem) as missing:
        await admin.admin_erasure.fn(request(), user="bob")
    assert status_of(missing) == (404, "not-found")

    monkeypatch.setattr(admin, "read_job", failing_async)
    with pytest.raises(Problem) as down:
        await admin.admin_erasure.fn(request(), user="ann")
    assert status_of(down) == (503, "database-unavailable")


# operations.py


class Connecting:
    async def __aenter__(self) -> object:
        return object()

    async def __aexit__(self, *_: object) -> None:
        return None


class Redis:
    async def ping(self) -> str:
        return "not configured"


async def test_readyz_on_a_newer_compatible_schema_is_ready_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    async def verdict(connection: Any) -> Verdict:
        return Verdict(True, "f00dcafe", "database is at newer revision f00dcafe, compatible back to x")

    monkeypatch.setattr(readiness, "schema_verdict", verdict)
    engine = SimpleNamespace(connect=Connecting)
    checks = DatabaseReadiness(engine, engine, clock=lambda: -1.0)  # type: ignore[arg-type]  # no report due
    response = await operations.readyz.fn(request(readiness=checks, drain=DrainFlag(bytearray(1)), redis=Redis()))
    assert response.status_code == 200
    assert msgspec.json.decode(response.content)["checks"]["schema"] == {
        "status": "ok",
        "revision": SCHEMA_REVISION,
        "database_revision": "f00dcafe",
        "detail": "database is at newer revision f00dcafe, compatible back to x",
    }


async def test_an_unknown_problem_type_is_404() -> None:
    with pytest.raises(Problem) as refused:
        await operations.problem_kind.fn("no-such-kind")
    assert status_of(refused) == (404, "not-found")
    known = await operations.problem_kind.fn("rate-limited")
    assert known.content.startswith("Too many requests\n\n")


# schema_compat.py: what the verdict reads.


class Rows:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row

    def one(self) -> tuple[Any, ...]:
        assert self.row is not None
        return self.row

    def first(self) -> tuple[Any, ...] | None:
        return self.row


class Database:
    """PRESENT, then VERSION (scalar) or WINDOW, answered from what this database is said to hold."""

    def __init__(self, present: tuple[bool, bool], version: str | None = None, window: Any = None) -> None:
        self.present, self.version, self.window = present, version, window
        self.asked: list[str] = []

    async def execute(self, statement: Any, parameters: Any = None) -> Rows:
        if statement is schema_compat.PRESENT:
            self.asked.append("present")
            return Rows(self.present)
        assert statement is schema_compat.WINDOW
        self.asked.append("window")
        return Rows(self.window)

    async def scalar(self, statement: Any) -> str | None:
        assert statement is schema_compat.VERSION
        self.asked.append("version")
        return self.version


@pytest.mark.parametrize(
    ("database", "serves", "revision", "asked"),
    [
        (Database((False, False)), False, None, ["present"]),
        (Database((True, False), version="0001"), False, "0001", ["present", "version"]),
        (Database((True, False), version=SCHEMA_REVISION), True, SCHEMA_REVISION, ["present", "version"]),
        (Database((True, True), window=None), False, None, ["present", "window"]),
        (Database((True, True), window=(SCHEMA_REVISION, 5, SCHEMA_REVISION, 5, 5)), True, SCHEMA_REVISION, None),
    ],
    ids=["never-migrated", "no-record-table", "no-record-table-own-revision", "empty-version-table", "own-revision"],
)
async def test_the_schema_verdict_reads_only_what_it_needs(
    database: Database, serves: bool, revision: str | None, asked: list[str] | None
) -> None:
    verdict = await schema_verdict(database)  # type: ignore[arg-type]
    assert (verdict.serves, verdict.database_revision) == (serves, revision)
    if asked is not None:
        assert database.asked == asked


# openapi.py


def test_no_validation_operation_drops_litestars_generic_400_and_tolerates_no_responses() -> None:
    kept = openapi.NoValidationOperation(responses={"200": "ok", "400": "generic", "404": "ours"})  # type: ignore[dict-item]
    assert set(kept.responses or {}) == {"200", "404"}
    assert openapi.NoValidationOperation().responses is None


def test_the_docs_ui_refuses_to_start_without_its_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="drf-spectacular-sidecar is not installed"):
        openapi.swagger_ui_files()
