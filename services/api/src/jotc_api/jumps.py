"""The jumps service: parse, solve, record and answer, whichever transport brought the request.

``answer_jumps`` and ``answer_jotc`` are the work of POST /jumps and POST /jotc (an Incoming in,
a Reply out; served.py runs them, with the Idempotency-Key honoured); ``replay_jumps`` and
``replay_jotc`` rebuild a kept answer from its recorded request; ``read_jump`` is GET /jumps/{id}.
The answer structs below are what the routes declare and what is encoded, so the OpenAPI document
describes the bytes that are sent.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import anyio.to_thread
import msgspec
import uuid_utils
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from jotc_api import tracing
from jotc_api.memory import clouds_cost
from jotc_api.parsing import JotcBody, JumpInput, parse_json, parse_text
from jotc_api.problems import FieldError, Problem, database_unavailable, erased, overloaded, validation_problem
from jotc_api.queries import find_request
from jotc_api.recorder import DatabaseUnavailable, Overloaded, Row
from jotc_api.services import Services
from jotc_api.solver import Solution, Unreachable, solve
from jotc_api.tables import pack_clouds, unpack_clouds
from jotc_api.transport import JSON, TEXT, Incoming, Reply


class Solved(msgspec.Struct, kw_only=True):
    """What POST /jumps answers (JSON) and GET /jumps/{id} repeats: the request's id, who sent it,
    its game and the solution."""

    id: str
    jumps: int
    path: list[int]
    n: int
    max_jump: int
    user: str


class JumpAnswer(Solved, kw_only=True):
    """201 of POST /jumps (JSON)."""


class JumpRecord(Solved, kw_only=True):
    """GET /jumps/{id}: the recorded request, its solution and when it was recorded."""

    clouds: list[int]
    created_at: str


class Move(msgspec.Struct):
    from_: int = msgspec.field(name="from")
    to: int = 0


class JotcAnswer(msgspec.Struct):
    """200 of POST /jotc: the original PHP service's answer shape."""

    moves: list[Move]
    total: int


def parse_query(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "malformed-body", "the query string is not valid UTF-8; percent-encode it") from None
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise Problem(400, "malformed-body", "the query string's percent-escapes are not valid UTF-8") from None
    for key, value in pairs:
        if key in query:
            raise validation_problem([FieldError(key, "query parameter given more than once")])
        query[key] = value
    return query


async def solve_without_stalling(clouds: bytes, max_jump: int, offload_from: int) -> Solution | Unreachable:
    """Small inputs inline (microseconds); large ones on a worker thread, so this worker keeps
    serving other requests meanwhile (NumPy releases the GIL; the pure-Python walk yields it)."""
    with tracing.span("solve"):
        if len(clouds) < offload_from:
            return solve(clouds, max_jump)
        return await anyio.to_thread.run_sync(solve, clouds, max_jump)


async def solve_and_record(services: Services, data: JumpInput) -> tuple[uuid.UUID, Solution]:
    answer = await solve_without_stalling(data.clouds, data.max_jump, services.settings.offload_from)
    if isinstance(answer, Unreachable):
        raise Problem(
            422,
            "unreachable",
            f"the last cloud cannot be reached with max_jump = {data.max_jump}: "
            f"{data.max_jump} or more thunderheads in a row from cloud {answer.blocked_at}",
            blocked_at=answer.blocked_at,
        )
    request_id = uuid.UUID(bytes=uuid_utils.uuid7().bytes)
    row = Row(request_id, data.user, len(data.clouds), data.max_jump, pack_clouds(data.clouds), answer.jumps)
    try:
        with tracing.span("wait for commit"):
            await services.recorder.record(row)
    except Overloaded:
        raise overloaded() from None
    except DatabaseUnavailable as exc:  # its message names PostgreSQL's role, never its address
        raise database_unavailable(f"the request was not recorded: {exc}") from None
    return request_id, answer


def jumps_reply(kind: str, request_id: uuid.UUID, data: JumpInput, solution: Solution) -> Reply:
    record = str(request_id)  # once: each str() of a UUID costs more than the Reply
    location = f"/jumps/{record}"
    if kind == TEXT:
        return Reply(201, TEXT, f"{solution.jumps}\n".encode(), location, record=record, owner=data.user)
    answer = JumpAnswer(
        id=record, jumps=solution.jumps, path=solution.path, n=len(data.clouds), max_jump=data.max_jump, user=data.user
    )
    encoded = msgspec.json.encode(answer)
    return Reply(201, JSON, encoded, location, record=record, owner=data.user)


def jotc_reply(_: str, request_id: uuid.UUID, data: JumpInput, solution: Solution) -> Reply:
    moves = [Move(a, b) for a, b in itertools.pairwise(solution.path)]
    encoded = msgspec.json.encode(JotcAnswer(moves=moves, total=solution.jumps))
    return Reply(200, JSON, encoded, record=str(request_id), owner=data.user)


async def answer_jumps(services: Services, incoming: Incoming) -> Reply:
    """POST /jumps: JSON, or text/plain in HackerRank's format with user and max_jump in the query."""
    query = parse_query(incoming.query)
    max_clouds = services.settings.max_clouds
    with tracing.span("parse"):
        if incoming.kind == JSON:
            data = parse_json(incoming.body, query, max_clouds)
        else:
            data = parse_text(incoming.body, query, max_clouds)
    request_id, solution = await solve_and_record(services, data)
    return jumps_reply(incoming.kind, request_id, data, solution)


async def answer_jotc(services: Services, incoming: Incoming) -> Reply:
    """POST /jotc: JSON, max_jump 2, answered in the original PHP service's shape."""
    with tracing.span("parse"):
        data = parse_json(incoming.body, parse_query(incoming.query), services.settings.max_clouds, form=JotcBody)
    request_id, solution = await solve_and_record(services, data)
    return jotc_reply(incoming.kind, request_id, data, solution)


async def recorded(services: Services, record_id: str) -> tuple[uuid.UUID, JumpInput, Solution]:
    """A recorded request and its solution, for replaying an idempotent answer. 410 once erased."""
    try:
        with tracing.span("read record"):
            found = await find_request(services.engine, uuid.UUID(record_id))
    except SQLAlchemyError:
        raise database_unavailable("PostgreSQL is unavailable; the kept answer could not be rebuilt") from None
    if found is None:
        raise erased()
    data = JumpInput(bytes(unpack_clouds(found.clouds, found.n)), found.user, found.max_jump)
    solution = await solve_without_stalling(data.clouds, data.max_jump, services.settings.offload_from)
    assert isinstance(solution, Solution), "only solved requests are recorded"
    return found.id, data, solution


async def replay_jumps(services: Services, kind: str, record_id: str) -> Reply:
    return jumps_reply(kind, *await recorded(services, record_id))


async def replay_jotc(services: Services, kind: str, record_id: str) -> Reply:
    return jotc_reply(kind, *await recorded(services, record_id))


def canonical_id(raw_id: str) -> uuid.UUID:
    """A record has one URL: its id in the canonical spelling (lowercase, hyphenated); any other
    spelling ("{...}", "urn:uuid:", uppercase, no hyphens) is not a record's id: 404."""
    try:
        wanted = uuid.UUID(raw_id)
    except ValueError:
        wanted = None
    if wanted is None or str(wanted) != raw_id:
        raise Problem(404, "not-found", f"no recorded request has id {raw_id[:64]!r}")
    return wanted


async def read_jump(
    engine: AsyncEngine, raw_id: str, offload_from: int, charge: Callable[[int], Awaitable[None]]
) -> JumpRecord:
    """The recorded request; its clouds are charged (memory.py) before its answer is rebuilt."""
    wanted = canonical_id(raw_id)
    try:
        with tracing.span("read record"):
            found = await find_request(engine, wanted)
    except SQLAlchemyError:
        raise database_unavailable("PostgreSQL is unavailable; the request could not be read") from None
    if found is None:
        raise Problem(404, "not-found", f"no recorded request has id {wanted}")
    await charge(clouds_cost(found.n))  # at once or 503: a read holds no upload slot to wait in
    clouds = unpack_clouds(found.clouds, found.n)
    answer = await solve_without_stalling(bytes(clouds), found.max_jump, offload_from)
    path = answer.path if isinstance(answer, Solution) else []
    return JumpRecord(
        id=str(found.id),
        jumps=found.jumps,
        path=path,
        n=found.n,
        max_jump=found.max_jump,
        user=found.user,
        clouds=clouds,
        created_at=found.created_at.isoformat(),
    )
