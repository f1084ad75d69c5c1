"""The admin API: statistics, the listing of recorded requests, and erasure of a user's records.

Every route needs ``Authorization: Bearer <JOTC_ADMIN_TOKEN>``, compared in
constant time; with no token configured every admin request is 401. Query
parameters are parsed here, strictly: unknown ones, and values outside the
contract's lists, are 422 naming the parameter. Cursors are opaque to clients
(base64url JSON) and bound to the sort they were made for.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from sqlalchemy.exc import SQLAlchemyError

from jotc_api.openapi import NoValidationOperation, answer_spec, problem
from jotc_api.problems import FieldError, Problem, validation_problem
from jotc_api.queries import erase_user, requests_page, stats_page, stats_totals
from jotc_api.settings import Settings
from jotc_api.solver import Solution, solve
from jotc_api.tables import unpack_clouds

JSON = "application/json"
SORTS = ("requests", "user", "last_request_at")
ORDERS = ("asc", "desc")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
BAD_CURSOR = (
    "is not a cursor this listing made; pass next_cursor from the previous page unchanged, with the same sort and order"
)


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    settings: Settings = connection.app.state.settings
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.admin_token
    challenge = 'Bearer realm="jotc-admin"'
    if not header:
        detail = "send Authorization: Bearer <JOTC_ADMIN_TOKEN>"
    elif scheme.lower() != "bearer" or not token.strip():
        detail = "the Authorization header must use the Bearer scheme"
    elif expected is None:
        detail = "the admin API is disabled: JOTC_ADMIN_TOKEN is not configured"
    elif hmac.compare_digest(token.strip().encode(), expected.encode()):
        return
    else:
        detail = "the bearer token is not valid"
        challenge += ', error="invalid_token"'
    raise Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def strict_query(request: Request[Any, Any, Any], allowed: set[str]) -> dict[str, str]:
    query: dict[str, str] = {}
    errors = []
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            errors.append(FieldError(key, f"unknown query parameter; accepted: {', '.join(sorted(allowed))}"))
        elif key in query:
            errors.append(FieldError(key, "given more than once"))
        else:
            query[key] = value
    if errors:
        raise validation_problem(errors)
    return query


def parse_limit(query: Mapping[str, str], errors: list[FieldError]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_LIMIT:
        return int(raw)
    errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}, got {raw[:20]!r}"))
    return DEFAULT_LIMIT


def parse_choice(
    query: Mapping[str, str], name: str, choices: tuple[str, ...], default: str, errors: list[FieldError]
) -> str:
    value = query.get(name, default)
    if value not in choices:
        errors.append(FieldError(name, f"must be one of {', '.join(choices)}, got {value[:40]!r}"))
        return default
    return value


def parse_time(query: Mapping[str, str], name: str, errors: list[FieldError]) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in raw.upper():
        errors.append(
            FieldError(name, f"must be an RFC 3339 time with offset, like 2026-11-27T18:00:00Z; got {raw[:40]!r}")
        )
        return None
    return value


def make_cursor(kind: str, key: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode({"k": kind, "v": key})).decode().rstrip("=")


def read_cursor(raw: str | None, kind: str, errors: list[FieldError]) -> list[Any] | None:
    if raw is None:
        return None
    try:
        decoded = msgspec.json.decode(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(decoded, dict) and decoded.get("k") == kind and isinstance(decoded.get("v"), list):
            return list(decoded["v"])
    except (ValueError, binascii.Error, msgspec.DecodeError):
        pass
    errors.append(FieldError("cursor", BAD_CURSOR))
    return None


def unavailable() -> Problem:
    return Problem(503, "database-unavailable", "PostgreSQL is unavailable; try again", headers={"Retry-After": "2"})


def json_response(document: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(document), status_code=status, media_type=JSON)


class StatsUser(msgspec.Struct):
    user: str
    requests: int
    last_request_at: str


class StatsPage(msgspec.Struct):
    total_requests: int
    total_users: int
    users: list[StatsUser]
    next_cursor: str | None


class RequestItem(msgspec.Struct):
    id: str
    user: str
    n: int
    max_jump: int
    jumps: int
    path: list[int]
    created_at: str


class RequestsPage(msgspec.Struct):
    items: list[RequestItem]
    next_cursor: str | None


class Erased(msgspec.Struct):
    user: str
    deleted: int


AUTH_ERRORS = {
    401: problem("Missing, malformed or wrong bearer token, or no token configured"),
    422: problem("A query parameter is unknown or out of range; errors names it"),
    503: problem("PostgreSQL unavailable"),
}


@get(
    "/stats",
    summary="Requests per user",
    operation_class=NoValidationOperation,
    responses={
        200: answer_spec(StatsPage, "One page of users"),
        **AUTH_ERRORS,
    },
)
async def admin_stats(request: Request[Any, Any, Any]) -> Response[bytes]:
    query = strict_query(request, {"limit", "cursor", "sort", "order"})
    errors: list[FieldError] = []
    limit = parse_limit(query, errors)
    sort = parse_choice(query, "sort", SORTS, "requests", errors)
    order = parse_choice(query, "order", ORDERS, "desc", errors)
    after = read_cursor(query.get("cursor"), f"stats:{sort}:{order}", errors)
    key: tuple[Any, str] | None = None
    if after is not None:
        if len(after) != 2 or not isinstance(after[1], str):
            errors.append(FieldError("cursor", BAD_CURSOR))
        else:
            value = after[0]
            if sort == "last_request_at":
                try:
                    value = datetime.fromisoformat(str(value))
                except ValueError:
                    errors.append(FieldError("cursor", BAD_CURSOR))
            key = (value, after[1])
    if errors:
        raise validation_problem(errors)
    engine = request.app.state.engine
    try:
        total_requests, total_users = await stats_totals(engine)
        rows = await stats_page(engine, sort, order == "desc", limit + 1, key)
    except SQLAlchemyError:
        raise unavailable() from None
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]
        sort_value: Any = {
            "requests": last.requests,
            "user": last.user,
            "last_request_at": last.last_request_at.isoformat(),
        }[sort]
        next_cursor = make_cursor(f"stats:{sort}:{order}", [sort_value, last.user])
    return json_response(
        StatsPage(
            total_requests,
            total_users,
            [StatsUser(r.user, r.requests, r.last_request_at.isoformat()) for r in rows],
            next_cursor,
        )
    )


@get(
    "/requests",
    summary="Recorded requests, newest first",
    operation_class=NoValidationOperation,
    responses={
        200: answer_spec(RequestsPage, "One page of requests"),
        **AUTH_ERRORS,
    },
)
async def admin_requests(request: Request[Any, Any, Any]) -> Response[bytes]:
    query = strict_query(request, {"user", "since", "until", "limit", "cursor"})
    errors: list[FieldError] = []
    limit = parse_limit(query, errors)
    since = parse_time(query, "since", errors)
    until = parse_time(query, "until", errors)
    user = query.get("user")
    if user is not None and (not 1 <= len(user) <= 320 or "\x00" in user):
        errors.append(FieldError("user", "must be 1 to 320 characters, without NUL"))
    after = read_cursor(query.get("cursor"), "requests", errors)
    key: tuple[datetime, uuid.UUID] | None = None
    if after is not None:
        try:
            key = (datetime.fromisoformat(str(after[0])), uuid.UUID(str(after[1])))
        except (ValueError, IndexError):
            errors.append(FieldError("cursor", BAD_CURSOR))
    if errors:
        raise validation_problem(errors)
    try:
        rows = await requests_page(
            request.app.state.engine, user=user, since=since, until=until, limit=limit + 1, after=key
        )
    except SQLAlchemyError:
        raise unavailable() from None
    more = len(rows) > limit
    rows = rows[:limit]
    items = []
    for row in rows:
        answer = solve(bytes(unpack_clouds(row.clouds, row.n)), row.max_jump)
        path = answer.path if isinstance(answer, Solution) else []
        items.append(
            RequestItem(str(row.id), row.user, row.n, row.max_jump, row.jumps, path, row.created_at.isoformat())
        )
    next_cursor = make_cursor("requests", [rows[-1].created_at.isoformat(), str(rows[-1].id)]) if more else None
    return json_response(RequestsPage(items, next_cursor))


@delete(
    "/users/{user:str}/requests",
    summary="Erase a user's requests and statistics",
    operation_class=NoValidationOperation,
    status_code=200,
    responses={
        200: answer_spec(Erased, "How many requests were erased"),
        **AUTH_ERRORS,
    },
)
async def admin_erase_user(request: Request[Any, Any, Any], user: FromPath[str]) -> Response[bytes]:
    if not 1 <= len(user) <= 320 or "\x00" in user:
        raise validation_problem([FieldError("user", "must be 1 to 320 characters, without NUL")])
    try:
        deleted = await erase_user(request.app.state.engine, user)
    except SQLAlchemyError:
        raise unavailable() from None
    return json_response(Erased(user, deleted))


admin_router = Router(
    path="/admin",
    route_handlers=[admin_stats, admin_requests, admin_erase_user],
    guards=[require_admin],
    tags=["admin"],
    security=[{"bearer": []}],
)
