"""Erasure leases: which runner works on a running erasure, and until when, kept in its row.

A running erasure is worked on by one runner at a time. The runner's claim is
written into the job's row (``runner``, ``lease_until``) rather than held as a
PostgreSQL session lock, so it survives a transaction-mode pooler (PgBouncer),
where a session's locks would stay behind on a server connection another
client gets next. A runner renews its lease with every chunk it commits and
clears it when it stops; a runner that dies leaves a lease that expires, and
another runner takes the job over then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None
# Expand only: two nullable columns 0002's code never names. While both releases run, 0002's runners
# hold their session lock and 0003's take the same lock for each chunk's transaction, so the two
# never work on one job at the same moment.
compatible_back_to: str = "0002"


def upgrade() -> None:
    # Nullable, no default: adding them rewrites nothing, and holds the table's lock for an instant.
    op.add_column("erasure_jobs", sa.Column("runner", UUID(as_uuid=True), nullable=True))
    op.add_column(
        "erasure_jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("erasure_jobs", "lease_until")
    op.drop_column("erasure_jobs", "runner")
