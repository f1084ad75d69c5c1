"""Test-only expand step: a nullable column, which the previous release's code never mentions.

Revision ID: t_expand
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jotc_migrations.cli import product_head

revision: str = "t_expand"
down_revision: str | None = product_head()
compatible_back_to: str | None = down_revision


def upgrade() -> None:
    op.add_column("jump_requests", sa.Column("client_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jump_requests", "client_note")
