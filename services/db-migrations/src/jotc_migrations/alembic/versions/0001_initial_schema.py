"""Initial schema: recorded requests and per-user statistics.

``jump_requests.clouds`` is bit-packed, one bit per cloud, 1 = thunderhead.
Cloud ``i`` is bit ``i % 8`` (least significant bit first) of byte ``i // 8``:
exactly the numbering of PostgreSQL's ``get_bit(bytea, i)``, so SQL can read
cloud ``i`` as ``get_bit(clouds, i)``. Unused high bits of the last byte are 0.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None
# The oldest application schema revision that works once this migration has run (README: the
# compatibility window). The first revision has nothing older to stay compatible with.
compatible_back_to: str = "0001"

USER_NAME_LENGTH = "char_length(user_name) BETWEEN 1 AND 320"


def upgrade() -> None:
    op.create_table(
        "jump_requests",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("user_name", sa.Text(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("max_jump", sa.SmallInteger(), nullable=False),
        sa.Column("clouds", postgresql.BYTEA(), nullable=False),
        sa.Column("jumps", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint(USER_NAME_LENGTH, name="ck_jump_requests_user_name_length"),
        sa.CheckConstraint("n >= 2", name="ck_jump_requests_n_min"),
        sa.CheckConstraint("max_jump BETWEEN 1 AND 1000", name="ck_jump_requests_max_jump_range"),
        sa.CheckConstraint("jumps BETWEEN 1 AND n - 1", name="ck_jump_requests_jumps_range"),
        sa.CheckConstraint(
            "octet_length(clouds) = (n + 7) / 8", name="ck_jump_requests_clouds_length"
        ),
        # The guard keeps get_bit in range; a wrong length is ck_jump_requests_clouds_length's to
        # report (PostgreSQL evaluates CHECKs in name order, and AND does not short-circuit).
        sa.CheckConstraint(
            "CASE WHEN octet_length(clouds) = (n + 7) / 8"
            " THEN get_bit(clouds, 0) = 0 AND get_bit(clouds, n - 1) = 0 ELSE true END",
            name="ck_jump_requests_clouds_ends_safe",
        ),
    )
    # Admin listing: newest first, optionally for one user; (created_at, id) is the keyset.
    op.create_index(
        "ix_jump_requests_created_at_id",
        "jump_requests",
        [sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_jump_requests_user_created_at_id",
        "jump_requests",
        ["user_name", sa.text("created_at DESC"), sa.text("id DESC")],
    )

    op.create_table(
        "user_stats",
        sa.Column("user_name", sa.Text(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("last_request_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(USER_NAME_LENGTH, name="ck_user_stats_user_name_length"),
        sa.CheckConstraint("requests >= 1", name="ck_user_stats_requests_positive"),
    )
    # GET /admin/stats sorts by requests or last_request_at; user_name breaks ties in the keyset.
    op.create_index("ix_user_stats_requests_user", "user_stats", ["requests", "user_name"])
    op.create_index(
        "ix_user_stats_last_request_at_user", "user_stats", ["last_request_at", "user_name"]
    )


def downgrade() -> None:
    op.drop_table("user_stats")
    op.drop_table("jump_requests")
