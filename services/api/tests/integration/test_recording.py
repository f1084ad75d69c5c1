"""The write's two forms against real PostgreSQL: a batch of one row (plain values) and a batch of
several (one array per column) record the same rows and fold them into the same statistics."""

from __future__ import annotations

import uuid

import psycopg

from jotc_api.recorder import Row, insert_rows
from jotc_api.tables import pack_clouds


def game(user: str, clouds: bytes, max_jump: int, jumps: int) -> Row:
    return Row(uuid.uuid4(), user, len(clouds), max_jump, pack_clouds(clouds), jumps)


async def test_a_batch_of_one_and_a_batch_of_several_record_alike(
    database_url: str, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    one = [game("form-one", b"\x00\x00\x01\x00", 2, 2)]
    several = [
        game("form-many-b", b"\x00\x01\x00", 2, 1),
        game("form-many-a", b"\x00\x00", 1, 1),
        game("form-many-b", b"\x00\x00\x00\x00\x00", 3, 2),
    ]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as driver:
        await insert_rows(driver, one)
        await insert_rows(driver, several)
    for row in one + several:
        assert db.execute(
            "SELECT user_name, n, max_jump, clouds, jumps FROM jump_requests WHERE id = %s", (row.id,)
        ).fetchone() == (row.user, row.n, row.max_jump, row.clouds, row.jumps)
    stats = db.execute(
        "SELECT user_name, requests FROM user_stats WHERE user_name LIKE 'form-%' ORDER BY user_name"
    ).fetchall()
    assert stats == [("form-many-a", 1), ("form-many-b", 2), ("form-one", 1)]
