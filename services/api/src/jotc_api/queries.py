"""Reads of recorded requests and statistics (erasure lives in erasure.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, literal, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from jotc_api.tables import jump_requests, stats_totals, user_stats


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    id: uuid.UUID
    user: str
    n: int
    max_jump: int
    clouds: bytes  # bit-packed
    jumps: int
    created_at: datetime


async def find_request(engine: AsyncEngine, request_id: uuid.UUID) -> RecordedRequest | None:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(
                jump_requests.c.id,
                jump_requests.c.user_name,
                jump_requests.c.n,
                jump_requests.c.max_jump,
                jump_requests.c.clouds,
                jump_requests.c.jumps,
                jump_requests.c.created_at,
            ).where(jump_requests.c.id == request_id)
        )
        row = result.first()
    if row is None:
        return None
    return RecordedRequest(*row)


@dataclass(frozen=True, slots=True)
class UserStats:
    user: str
    requests: int
    last_request_at: datetime


STATS_ORDER = {
    "requests": user_stats.c.requests,
    "user": user_stats.c.user_name,
    "last_request_at": user_stats.c.last_request_at,
}


async def read_totals(engine: AsyncEngine) -> tuple[int, int]:
    """(requests, users) kept: the sum of stats_totals' shard rows, which triggers on user_stats
    keep true in the same transaction as every change; no scan, whatever the number of users."""
    totals = stats_totals.c
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(func.coalesce(func.sum(totals.requests), 0), func.coalesce(func.sum(totals.users), 0))
            )
        ).one()
    return int(row[0]), int(row[1])


async def stats_page(
    engine: AsyncEngine, sort: str, descending: bool, limit: int, after_user: str | None
) -> list[UserStats]:
    """``limit`` rows of user_stats ordered by the sort column, ties broken by user name. Sorted by
    user (the one key that never changes), ``after_user`` continues a keyset listing past that name."""
    name = user_stats.c.user_name
    columns = [name] if sort == "user" else [STATS_ORDER[sort], name]
    query = select(name, user_stats.c.requests, user_stats.c.last_request_at)
    if after_user is not None:
        assert sort == "user", "only the user sort pages"
        query = query.where(name < after_user if descending else name > after_user)
    order = [column.desc() if descending else column.asc() for column in columns]
    async with engine.connect() as connection:
        rows = (await connection.execute(query.order_by(*order).limit(limit))).all()
    return [UserStats(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class ListedRequest:
    id: uuid.UUID
    user: str
    n: int
    max_jump: int
    clouds: bytes
    jumps: int
    created_at: datetime


async def requests_page(
    engine: AsyncEngine,
    *,
    user: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    cell_budget: int,
) -> tuple[list[ListedRequest], bool]:
    """Newest first; (created_at, id) is the keyset, so pages neither skip nor repeat rows.

    A page holds at most ``limit`` rows and, past its first row, at most ``cell_budget`` clouds
    in all: the clouds of rows beyond the budget are not even read. Returns the rows and whether
    more follow."""
    t = jump_requests.c
    query = select(t.id, t.user_name, t.n, t.max_jump, t.clouds, t.jumps, t.created_at)
    if user is not None:
        query = query.where(t.user_name == user)
    if since is not None:
        query = query.where(t.created_at >= since)
    if until is not None:
        query = query.where(t.created_at < until)
    if after is not None:
        query = query.where(
            tuple_(t.created_at, t.id) < tuple_(literal(after[0], t.created_at.type), literal(after[1], t.id.type))
        )
    page = query.order_by(t.created_at.desc(), t.id.desc()).limit(limit + 1).subquery()
    newest_first = (page.c.created_at.desc(), page.c.id.desc())
    cells = func.sum(page.c.n).over(order_by=newest_first)
    counted = select(page, cells.label("cells")).subquery()
    within = or_(counted.c.cells <= cell_budget, counted.c.cells == counted.c.n)  # the first row always
    result = select(
        counted.c.id,
        counted.c.user_name,
        counted.c.n,
        counted.c.max_jump,
        case((within, counted.c.clouds), else_=None),
        counted.c.jumps,
        counted.c.created_at,
    ).order_by(counted.c.created_at.desc(), counted.c.id.desc())
    async with engine.connect() as connection:
        rows = (await connection.execute(result)).all()
    kept = [ListedRequest(*row) for row in rows[:limit] if row[4] is not None]
    return kept, len(kept) < len(rows)
