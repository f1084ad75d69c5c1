"""The tables as the API sees them. db-migrations owns the schema; a test proves these match.

``jump_requests.clouds`` is bit-packed: cloud ``i`` is bit ``i % 8`` (least
significant first) of byte ``i // 8``, 1 = thunderhead, the numbering of
PostgreSQL's ``get_bit``. ``SCHEMA_REVISION`` is the Alembic head this build
expects; /readyz compares it with the database.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import BYTEA, UUID

SCHEMA_REVISION = "0003"

metadata = MetaData()

# db-migrations' record of each applied revision and the oldest application revision it stays
# compatible with; /readyz reads it (schema_compat.py) to serve a newer, compatible schema.
schema_compat = Table(
    "jotc_schema_compat",
    metadata,
    Column("revision", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("compatible_back_to", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# The revisions ready workers serve, each with when one last said so (readiness.py); jotc-migrate
# makes the table, and its release guard reads it to keep the pods it would strand serving.
schema_readers = Table(
    "jotc_schema_readers",
    metadata,
    Column("revision", Text, primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

USER_NAME_LENGTH = "char_length(user_name) BETWEEN 1 AND 320"

jump_requests = Table(
    "jump_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("user_name", Text, nullable=False),
    Column("n", Integer, nullable=False),
    Column("max_jump", SmallInteger, nullable=False),
    Column("clouds", BYTEA, nullable=False),
    Column("jumps", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint(USER_NAME_LENGTH, name="ck_jump_requests_user_name_length"),
    CheckConstraint("n >= 2", name="ck_jump_requests_n_min"),
    CheckConstraint("max_jump BETWEEN 1 AND 1000", name="ck_jump_requests_max_jump_range"),
    CheckConstraint("jumps BETWEEN 1 AND n - 1", name="ck_jump_requests_jumps_range"),
    CheckConstraint("octet_length(clouds) = (n + 7) / 8", name="ck_jump_requests_clouds_length"),
    CheckConstraint(
        "CASE WHEN octet_length(clouds) = (n + 7) / 8"
        " THEN get_bit(clouds, 0) = 0 AND get_bit(clouds, n - 1) = 0 ELSE true END",
        name="ck_jump_requests_clouds_ends_safe",
    ),
    Index("ix_jump_requests_created_at_id", text("created_at DESC"), text("id DESC")),
    Index("ix_jump_requests_user_created_at_id", "user_name", text("created_at DESC"), text("id DESC")),
)

user_stats = Table(
    "user_stats",
    metadata,
    Column("user_name", Text, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("last_request_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(USER_NAME_LENGTH, name="ck_user_stats_user_name_length"),
    CheckConstraint("requests >= 1", name="ck_user_stats_requests_positive"),
    Index("ix_user_stats_requests_user", "requests", "user_name"),
    Index("ix_user_stats_last_request_at_user", "last_request_at", "user_name"),
)

# The totals of user_stats, split over shard rows that triggers on user_stats keep true in the same
# transaction as every change (db-migrations 0002); GET /admin/stats sums them instead of scanning.
stats_totals = Table(
    "stats_totals",
    metadata,
    Column("shard", SmallInteger, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    Column("users", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("shard BETWEEN 0 AND 15", name="ck_stats_totals_shard_range"),
)

# One erasure per user: the cutoff (requests recorded up to then are erased), progress, state.
erasure_jobs = Table(
    "erasure_jobs",
    metadata,
    Column("user_name", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("cutoff", DateTime(timezone=True), nullable=False),
    Column("deleted", BigInteger, nullable=False, server_default=text("0")),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # The runner working on a running job and until when its claim holds (erasure.py).
    Column("runner", UUID(as_uuid=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    CheckConstraint(USER_NAME_LENGTH, name="ck_erasure_jobs_user_name_length"),
    CheckConstraint("state IN ('running', 'done')", name="ck_erasure_jobs_state"),
)


def pack_clouds(clouds: bytes) -> bytes:
    """One byte per cloud (0/1) to one bit per cloud, least significant bit first."""
    return np.packbits(np.frombuffer(clouds, dtype=np.uint8), bitorder="little").tobytes()


def unpack_clouds(packed: bytes, n: int) -> list[int]:
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n, bitorder="little")
    values: list[int] = bits.tolist()
    return values
