"""POST /jumps, POST /jotc and GET /jumps/{id}: solve, record, read back.

The two POST routes are the service's hot path. Their logic is the plain
functions ``answer_jumps`` / ``answer_jotc`` (bytes in, Reply out), served by
``hot_path``: a small ASGI layer in front of Litestar that answers exactly
these two routes without the framework's per-request machinery (it measured
at several times the cost of solving and recording). Litestar still declares
them, for the OpenAPI document and for any mount without the hot path; its
handlers call the same functions, so both answer identically.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

import anyio.to_thread
import msgspec
import uuid_utils
from litestar import Litestar, Request, Response, get, post
from litestar.enums import ScopeType
from litestar.params import FromPath
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from sqlalchemy.exc import SQLAlchemyError

from jotc_api.openapi import (
    WRITE_ERRORS,
    JotcAnswer,
    JotcOperation,
    JumpAnswer,
    JumpRecord,
    JumpsOperation,
    NoValidationOperation,
    answer_spec,
    problem,
)
from jotc_api.parsing import JumpInput, parse_json, parse_text
from jotc_api.problems import PROBLEM_JSON, FieldError, Problem, validation_problem
from jotc_api.queries import find_request
from jotc_api.recorder import DatabaseUnavailable, Recorder, Row
from jotc_api.redis_features import (
    IdempotencyStore,
    IdempotencyUnavailable,
    StoredReply,
    valid_idempotency_key,
)
from jotc_api.settings import Settings
from jotc_api.solver import Solution, Unreachable, solve
from jotc_api.tables import pack_clouds, unpack_clouds

RETRY_AFTER_SECONDS = "2"
JSON = "application/json"
TEXT = "text/plain"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    media_type: str
    body: bytes
    location: str | None = None


def body_kind(content_type: str, *, text_allowed: bool) -> str:
    """JSON or TEXT from a Content-Type header; 415 for anything else (before reading the body)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON or (kind.startswith("application/") and kind.endswith("+json")):
        return JSON
    if text_allowed and kind == TEXT:
        return TEXT
    accepted = "application/json or text/plain" if text_allowed else "application/json"
    raise Problem(
        415,
        "unsupported-media-type",
        f"Content-Type {kind or '(none)'!r} is not accepted; send {accepted}",
    )


def parse_query(raw: bytes) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key in query:
            raise validation_problem([FieldError(key, "query parameter given more than once")])
        query[key] = value
    return query


async def solve_without_stalling(clouds: bytes, max_jump: int, offload_from: int) -> Solution | Unreachable:
    """Small inputs inline (microseconds); large ones on a worker thread, so this worker keeps
    serving other requests meanwhile (NumPy releases the GIL; the pure-Python walk yields it)."""
    if len(clouds) < offload_from:
        return solve(clouds, max_jump)
    return await anyio.to_thread.run_sync(solve, clouds, max_jump)


async def solve_and_record(settings: Settings, recorder: Recorder, data: JumpInput) -> tuple[uuid.UUID, Solution]:
    answer = await solve_without_stalling(data.clouds, data.max_jump, settings.offload_from)
    if isinstance(answer, Unreachable):
        raise Problem(
            422,
            "unreachable",
            f"the last cloud cannot be reached with max_jump = {data.max_jump}: "
            f"{data.max_jump} or more thunderheads in a row from cloud {answer.blocked_at}",
            extra={"blocked_at": answer.blocked_at},
        )
    request_id = uuid.UUID(bytes=uuid_utils.uuid7().bytes)
    row = Row(request_id, data.user, len(data.clouds), data.max_jump, pack_clouds(data.clouds), answer.jumps)
    try:
        await recorder.record(row)
    except DatabaseUnavailable as exc:
        raise Problem(
            503,
            "database-unavailable",
            f"the request was not recorded: {exc}",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    return request_id, answer


async def answer_jumps(
    settings: Settings, recorder: Recorder, kind: str, query: Mapping[str, str], body: bytes
) -> Reply:
    if kind == JSON:
        data = parse_json(body, query, settings.max_clouds)
    else:
        data = parse_text(body, query, settings.max_clouds)
    request_id, answer = await solve_and_record(settings, recorder, data)
    location = f"/jumps/{request_id}"
    if kind == TEXT:
        return Reply(201, TEXT, f"{answer.jumps}\n".encode(), location)
    encoded = msgspec.json.encode(
        {
            "id": str(request_id),
            "jumps": answer.jumps,
            "path": answer.path,
            "n": len(data.clouds),
            "max_jump": data.max_jump,
            "user": data.user,
        }
    )
    return Reply(201, JSON, encoded, location)


async def answer_jotc(
    settings: Settings, recorder: Recorder, kind: str, query: Mapping[str, str], body: bytes
) -> Reply:
    data = parse_json(body, query, settings.max_clouds)
    if data.max_jump_given:
        raise validation_problem([FieldError("max_jump", "unknown field; /jotc plays the classic game (use /jumps)")])
    _, answer = await solve_and_record(settings, recorder, data)
    encoded = msgspec.json.encode(
        {
            "moves": [{"from": a, "to": b} for a, b in itertools.pairwise(answer.path)],
            "total": answer.jumps,
        }
    )
    return Reply(200, JSON, encoded)


HOT_ROUTES = {"/jumps": (answer_jumps, True), "/jotc": (answer_jotc, False)}


async def answer_once(
    state: Any, route: str, kind: str, raw_query: bytes, body: bytes, key: bytes | None
) -> tuple[Reply, bool]:
    """Answer a POST, honouring an Idempotency-Key; True when the answer is a replay."""
    answer, _ = HOT_ROUTES[route]
    settings: Settings = state.settings
    if key is None:
        return await answer(settings, state.recorder, kind, parse_query(raw_query), body), False
    if not valid_idempotency_key(key):
        raise validation_problem([FieldError("Idempotency-Key", "must be 1 to 255 visible ASCII characters")])
    store: IdempotencyStore = state.idempotency
    name = key.decode("ascii")
    fingerprint = store.fingerprint(route, kind, raw_query, body)
    try:
        stored = await store.claim(name, fingerprint)
    except IdempotencyUnavailable as exc:
        raise Problem(
            503,
            "idempotency-unavailable",
            f"idempotency keys are kept in Redis, which is unavailable ({exc}); nothing was recorded",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    if stored is not None:
        if stored.fingerprint != fingerprint:
            raise Problem(422, "idempotency-key-reused", "this Idempotency-Key was used with a different request")
        if not stored.done:
            raise Problem(
                409,
                "idempotency-in-flight",
                "the first request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        return Reply(stored.status, stored.media_type, stored.body, stored.location), True
    try:
        reply = await answer(settings, state.recorder, kind, parse_query(raw_query), body)
    except Problem as problem:
        if problem.status >= 500:
            await store.release(name)  # nothing was recorded: let the client retry with the key
        else:
            await store.keep(name, StoredReply(fingerprint, True, problem.status, PROBLEM_JSON, problem.body()))
        raise
    except BaseException:
        await store.release(name)
        raise
    await store.keep(name, StoredReply(fingerprint, True, reply.status, reply.media_type, reply.body, reply.location))
    return reply, False


def hot_path(app: Litestar, asgi: ASGIApp) -> ASGIApp:
    """Answer POST /jumps and POST /jotc directly; pass everything else to ``asgi``."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST" or scope["path"] not in HOT_ROUTES:
            await asgi(scope, receive, send)
            return
        scope["path_template"] = scope["path"]  # for the metrics layer, as Litestar's router does
        _, text_allowed = HOT_ROUTES[scope["path"]]
        settings: Settings = app.state.settings
        content_type = ""
        content_length = -1
        key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"idempotency-key":
                key = value
        try:
            kind = body_kind(content_type, text_allowed=text_allowed)
            if content_length > settings.max_body_bytes:
                raise body_too_large()
            body = await read_body(receive, settings.max_body_bytes)
            if body is None:
                return  # the client hung up
            reply, replayed = await answer_once(app.state, scope["path"], kind, scope["query_string"], body, key)
        except Problem as exc:
            await respond(send, exc.status, PROBLEM_JSON, exc.body(), exc.headers)
            return
        headers = {"location": reply.location} if reply.location else {}
        if replayed:
            headers["idempotent-replayed"] = "true"
        await respond(send, reply.status, reply.media_type, reply.body, headers)

    return serve


def body_too_large() -> Problem:
    return Problem(413, "body-too-large", "the request body is larger than JOTC_MAX_BODY_BYTES allows")


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, refused with 413 as soon as it passes ``limit``; None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = cast("bytes", message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise body_too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, status: int, media_type: str, body: bytes, headers: Mapping[str, str]) -> None:
    raw_headers: list[tuple[bytes, bytes]] = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": raw_headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def through_litestar(request: Request[Any, Any, Any], route: str) -> Response[bytes]:
    """The same answer as the hot path gives, for a mount without it."""
    _, text_allowed = HOT_ROUTES[route]
    kind = body_kind(request.headers.get("content-type", ""), text_allowed=text_allowed)
    key = request.headers.get("idempotency-key")
    reply, replayed = await answer_once(
        request.app.state,
        route,
        kind,
        request.scope["query_string"],
        await request.body(),
        key.encode("latin-1") if key is not None else None,
    )
    headers = {"Location": reply.location} if reply.location else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=headers)


@post(
    "/jumps",
    operation_class=JumpsOperation,
    summary="Solve and record",
    description="Solves the game and records the request; 201 only after the row is committed. "
    "Send JSON, or text/plain in HackerRank's input format (user and max_jump in the query; "
    "the answer is then the number of jumps as text).",
    responses={201: answer_spec(JumpAnswer, "Solved and recorded"), **WRITE_ERRORS},
    status_code=201,
    tags=["jumps"],
)
async def post_jumps(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await through_litestar(request, "/jumps")


@post(
    "/jotc",
    operation_class=JotcOperation,
    summary="Solve and record, in the original PHP service's answer shape",
    responses={200: answer_spec(JotcAnswer, "Solved and recorded"), **WRITE_ERRORS},
    status_code=200,
    tags=["jumps"],
)
async def post_jotc(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await through_litestar(request, "/jotc")


@get(
    "/jumps/{request_id:str}",
    operation_class=NoValidationOperation,
    summary="Read a recorded request",
    responses={
        200: answer_spec(JumpRecord, "The recorded request"),
        404: problem("No such request, it was deleted, or the id is not a UUID"),
        503: problem("PostgreSQL unavailable"),
    },
    tags=["jumps"],
)
async def get_jump(request: Request[Any, Any, Any], request_id: FromPath[str]) -> Response[bytes]:
    try:
        wanted = uuid.UUID(request_id)
    except ValueError:
        raise Problem(404, "not-found", f"no recorded request has id {request_id[:64]!r}") from None
    try:
        found = await find_request(request.app.state.engine, wanted)
    except SQLAlchemyError:
        raise Problem(
            503,
            "database-unavailable",
            "PostgreSQL is unavailable; the request could not be read",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    if found is None:
        raise Problem(404, "not-found", f"no recorded request has id {wanted}")
    clouds = unpack_clouds(found.clouds, found.n)
    answer = solve(bytes(clouds), found.max_jump)
    path = answer.path if isinstance(answer, Solution) else []
    body = msgspec.json.encode(
        {
            "id": str(found.id),
            "user": found.user,
            "n": found.n,
            "max_jump": found.max_jump,
            "clouds": clouds,
            "jumps": found.jumps,
            "path": path,
            "created_at": found.created_at.isoformat(),
        }
    )
    return Response(body, media_type=JSON)
