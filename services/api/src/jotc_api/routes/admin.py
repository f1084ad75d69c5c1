"""The admin API: statistics, the listing of recorded requests, and erasure of a user's records
(erasure.py runs it in chunks; an erasure that outlives its request has a status route).

Every route needs ``Authorization: Bearer <JOTC_ADMIN_TOKEN>``, compared in
constant time; with no token configured every admin request is 401. Query
parameters are declared in each handler's signature (Litestar validates them and
the OpenAPI document lists them); values outside the declared ranges, and
parameters a handler does not declare, are 422 naming the parameter. Cursors are opaque to clients
(base64url JSON) and bound to the sort they were made for.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import uuid
from datetime import datetime
from functools import partial
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

import anyio.to_thread
import msgspec
from litestar import Request, Response, Router, delete, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, Parameter
from sqlalchemy.exc import SQLAlchemyError

from jotc_api.erasure import ErasureJob, read_job, recorded_ids
from jotc_api.memory import clouds_cost
from jotc_api.openapi import NoValidationOperation, problem
from jotc_api.parsing import check_user
from jotc_api.problems import FieldError, Problem, database_unavailable, validation_problem
from jotc_api.queries import ListedRequest, read_totals, requests_page, stats_page
from jotc_api.services import Services, services_of
from jotc_api.solver import Solution, solve
from jotc_api.tables import unpack_clouds

RESERVED = {"request", "state", "headers", "cookies", "query", "scope", "body", "data"}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
BAD_CURSOR = (
    "is not a cursor this listing made; pass next_cursor from the previous page unchanged, with the same sort and order"
)


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    settings = services_of(connection.app).settings
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


# Litestar converts leniently ("1e3" to 1000, "0" to 1970-01-01); the contract wants exactly
# these spellings, so the raw value of each declared parameter of these types is checked first.
STRICT_SPELLING: dict[type, tuple[re.Pattern[str], str]] = {
    int: (re.compile(r"[0-9]{1,9}"), "must be a whole number"),
    datetime: (
        re.compile(
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
        ),
        "must be an RFC 3339 time with an offset, like 2026-11-27T18:00:00Z",
    ),
}


def declared_type(annotation: Any) -> Any:
    """int for ``int``, datetime for ``datetime | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def strict_query(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """422 for a query parameter the route does not declare, one given twice, or one spelled in
    a way the contract does not accept: a typo such as ``sortt`` must not be silently ignored.
    What is accepted comes from the handler's signature."""
    parameters = handler.parsed_fn_signature.parameters
    declared = set(parameters) - RESERVED - set(connection.path_params)
    seen: set[str] = set()
    errors = []
    for key, value in connection.query_params.multi_items():
        if key not in declared:
            errors.append(FieldError(key, f"unknown query parameter; accepted: {', '.join(sorted(declared))}"))
        elif key in seen:
            errors.append(FieldError(key, "given more than once"))
        elif (rule := STRICT_SPELLING.get(declared_type(parameters[key].annotation))) and not rule[0].fullmatch(value):
            errors.append(FieldError(key, f"{rule[1]}, got {value[:40]!r}"))
        seen.add(key)
    if errors:
        raise validation_problem(errors)


def aware(value: datetime | None, name: str, errors: list[FieldError]) -> datetime | None:
    if value is not None and value.tzinfo is None:
        errors.append(FieldError(name, "must be an RFC 3339 time with an offset, like 2026-11-27T18:00:00Z"))
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


def storable(value: Any) -> bool:
    """What PostgreSQL can compare with a column: a bigint, or text without NUL (a forged cursor
    with anything else would fail in the database, and be reported as an outage)."""
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        return "\x00" not in value
    return True


def unavailable() -> Problem:
    return database_unavailable("PostgreSQL is unavailable; try again")


class StatsUser(msgspec.Struct):
    user: str
    requests: int
    last_request_at: str


class StatsPage(msgspec.Struct):
    """`next_cursor` (sort=user only) fetches the next page; `complete` is false while users
    follow the last one listed (with another sort: raise limit, or list by user)."""

    total_requests: int
    total_users: int
    users: list[StatsUser]
    next_cursor: str | None
    complete: bool


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


class ErasureStatus(msgspec.Struct):
    user: str
    state: str
    deleted: int
    requested_at: str
    updated_at: str
    finished_at: str | None
    status_url: str


def erasure_status(job: ErasureJob) -> ErasureStatus:
    return ErasureStatus(
        job.user,
        job.state,
        job.deleted,
        job.requested_at.isoformat(),
        job.updated_at.isoformat(),
        job.finished_at.isoformat() if job.finished_at else None,
        f"/admin/erasures/{quote(job.user, safe='')}",
    )


AUTH_ERRORS = {
    401: problem("Missing, malformed or wrong bearer token, or no token configured"),
    422: problem("A query parameter is unknown or out of range; errors names it"),
    503: problem("PostgreSQL unavailable"),
}


Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page, unchanged", max_length=4096)]

# Statistics page by user name only: a name never changes, while a user's requests and
# last_request_at change with each request they make, so a keyset over those would skip or
# repeat a user who posts between two pages.
PAGED_SORT = "user"
UNPAGED_SORT = (
    "only sort=user pages: a user's requests and last_request_at change as they post, so pages in "
    "that order would skip or repeat users; page with sort=user"
)
StatsCursor = Annotated[
    str | None,
    Parameter(description="next_cursor of the previous page, unchanged; sort=user only", max_length=4096),
]
StatsSort = Annotated[
    Literal["requests", "user", "last_request_at"],
    Parameter(
        description="Sort key. Only `user` pages (next_cursor): with `requests` or `last_request_at` the answer "
        "is the first `limit` users in that order, `complete` false when more follow"
    ),
]


def stats_cursor_key(cursor: str | None, sort: str, order: str, errors: list[FieldError]) -> str | None:
    """The user name a statistics cursor continues after; a cursor with a sort that does not page,
    or one this listing did not make, is an error on ``cursor``."""
    if cursor is not None and sort != PAGED_SORT:
        errors.append(FieldError("cursor", UNPAGED_SORT))
        return None
    key = read_cursor(cursor, f"stats:{PAGED_SORT}:{order}", errors)
    if key is None:
        return None
    # [sort value, user name], the sort value being the name itself: the shape of every cursor
    # this listing has made, so a listing under way survives an upgrade.
    if len(key) == 2 and all(isinstance(value, str) and storable(value) for value in key):
        return str(key[1])
    errors.append(FieldError("cursor", BAD_CURSOR))
    return None


@get(
    "/stats",
    summary="Requests per user",
    description="Pages (next_cursor) only when sorted by user: the one key a request never changes, so no "
    "user is skipped or repeated while others post. Sorted by requests or last_request_at, the answer is one "
    "page of at most `limit` users, and `complete` says whether it lists them all.",
    operation_class=NoValidationOperation,
    responses=AUTH_ERRORS,
)
async def admin_stats(
    request: Request[Any, Any, Any],
    limit: Limit = DEFAULT_LIMIT,
    cursor: StatsCursor = None,
    sort: StatsSort = "requests",
    order: Annotated[Literal["asc", "desc"], Parameter(description="Sort order")] = "desc",
) -> StatsPage:
    errors: list[FieldError] = []
    after = stats_cursor_key(cursor, sort, order, errors)
    if errors:
        raise validation_problem(errors)
    engine = services_of(request.app).engine
    try:
        total_requests, total_users = await read_totals(engine)
        rows = await stats_page(engine, sort, order == "desc", limit + 1, after)
    except SQLAlchemyError:
        raise unavailable() from None
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1].user if rows else ""
    return StatsPage(
        total_requests,
        total_users,
        [StatsUser(r.user, r.requests, r.last_request_at.isoformat()) for r in rows],
        make_cursor(f"stats:{PAGED_SORT}:{order}", [last, last]) if more and sort == PAGED_SORT else None,
        complete=not more,
    )


@get(
    "/requests",
    summary="Recorded requests, newest first",
    operation_class=NoValidationOperation,
    responses=AUTH_ERRORS,
)
async def admin_requests(
    request: Request[Any, Any, Any],
    user: Annotated[str | None, Parameter(description="Only this user's requests (exact name)")] = None,
    since: Annotated[datetime | None, Parameter(description="From this RFC 3339 time, included")] = None,
    until: Annotated[datetime | None, Parameter(description="Before this RFC 3339 time, excluded")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> RequestsPage:
    errors: list[FieldError] = []
    since = aware(since, "since", errors)
    until = aware(until, "until", errors)
    if user is not None:
        user = check_user(user, errors)
    after = read_cursor(cursor, "requests", errors)
    key: tuple[datetime, uuid.UUID] | None = None
    if after is not None:
        try:
            key = (datetime.fromisoformat(str(after[0])), uuid.UUID(str(after[1])))
        except (ValueError, IndexError, TypeError):
            errors.append(FieldError("cursor", BAD_CURSOR))
    if errors:
        raise validation_problem(errors)
    services = services_of(request.app)
    try:
        rows, more = await requests_page(
            services.engine,
            user=user,
            since=since,
            until=until,
            limit=limit,
            after=key,
            cell_budget=services.settings.admin_page_cells,
        )
    except SQLAlchemyError:
        raise unavailable() from None
    clouds = sum(row.n for row in rows)
    await services.memory.charge(request.scope, clouds_cost(clouds), wait=False)  # the paths about to be rebuilt
    if clouds < services.settings.offload_from:
        items = listed_items(rows)
    else:  # paths of large inputs are recomputed off the event loop
        items = await anyio.to_thread.run_sync(listed_items, rows)
    next_cursor = make_cursor("requests", [rows[-1].created_at.isoformat(), str(rows[-1].id)]) if more else None
    return RequestsPage(items, next_cursor)


def listed_items(rows: list[ListedRequest]) -> list[RequestItem]:
    items = []
    for row in rows:
        answer = solve(bytes(unpack_clouds(row.clouds, row.n)), row.max_jump)
        path = answer.path if isinstance(answer, Solution) else []
        items.append(
            RequestItem(str(row.id), row.user, row.n, row.max_jump, row.jumps, path, row.created_at.isoformat())
        )
    return items


@delete(
    "/users/{user:str}/requests",
    summary="Erase a user's requests and statistics",
    description=(
        "Erases the requests the user made up to now, in short chunks that never stall other writers. "
        "200 when done within the request; 202 with the erasure's status when it continues in the background."
    ),
    operation_class=NoValidationOperation,
    status_code=200,
    responses={
        **AUTH_ERRORS,
        202: ResponseSpec(data_container=ErasureStatus, description="Erasure continues in the background"),
    },
)
async def admin_erase_user(request: Request[Any, Any, Any], user: FromPath[str]) -> Response[Erased | ErasureStatus]:
    errors: list[FieldError] = []
    name = check_user(user, errors)
    if errors:
        raise validation_problem(errors)
    try:
        job = await services_of(request.app).eraser.erase(name)
    except SQLAlchemyError:
        raise unavailable() from None
    if not job.done:
        status = erasure_status(job)
        return Response(status, status_code=202, headers={"Location": status.status_url})
    return Response(Erased(name, job.deleted), status_code=200)


async def forget_erased(services: Services, user: str) -> None:
    """What follows a finished erasure, in the Eraser's background (never in the request): the
    user's idempotency keys whose requests it deleted become tombstones; keys of the requests it
    kept go on replaying."""
    if services.redis.client is not None:
        await services.idempotency.forget_erased(user, partial(recorded_ids, services.engine))


@get(
    "/erasures/{user:str}",
    summary="The state of a user's last erasure",
    operation_class=NoValidationOperation,
    responses={**AUTH_ERRORS, 404: problem("No erasure was ever asked for this user")},
)
async def admin_erasure(request: Request[Any, Any, Any], user: FromPath[str]) -> ErasureStatus:
    errors: list[FieldError] = []
    name = check_user(user, errors)
    if errors:
        raise validation_problem(errors)
    try:
        job = await read_job(services_of(request.app).engine, name)
    except SQLAlchemyError:
        raise unavailable() from None
    if job is None:
        raise Problem(404, "not-found", "no erasure was asked for this user")
    return erasure_status(job)


admin_router = Router(
    path="/admin",
    route_handlers=[admin_stats, admin_requests, admin_erase_user, admin_erasure],
    guards=[require_admin, strict_query],
    # Answers are Cache-Control: no-store, as every answer that names no policy (pipeline.py).
    tags=["admin"],
    security=[{"bearer": []}],
)
