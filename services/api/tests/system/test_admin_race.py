"""Erasure racing new requests for the same user on the real server (2 workers): the statistics
still agree with the rows."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg
from support import AUTH, ApiServer

Connection = psycopg.Connection[tuple[object, ...]]


def test_erasure_racing_new_requests_leaves_stats_that_agree(api: ApiServer, db: Connection) -> None:
    user = f"race-{uuid.uuid4().hex[:8]}@example.com"

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:

            async def posts() -> None:
                for _ in range(15):
                    await asyncio.gather(
                        *(http.post("/jumps", json={"clouds": [0, 0], "user": user}) for _ in range(8))
                    )

            async def deletes() -> None:
                for _ in range(15):
                    response = await http.delete(f"/admin/users/{user}/requests", headers=AUTH)
                    assert response.status_code == 200
                    await asyncio.sleep(0.01)  # the pace of the race, not a wait for anything

            await asyncio.gather(posts(), deletes())

    asyncio.run(scenario())
    rows = db.execute("SELECT count(*) FROM jump_requests WHERE user_name = %s", (user,)).fetchone()
    stats = db.execute("SELECT requests FROM user_stats WHERE user_name = %s", (user,)).fetchone()
    assert rows is not None
    assert (stats[0] if stats else 0) == rows[0], f"statistics say {stats}, the table holds {rows[0]} rows"
