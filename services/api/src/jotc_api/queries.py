"""Reads of recorded requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from jotc_api.tables import jump_requests


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
