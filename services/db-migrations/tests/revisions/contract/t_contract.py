"""Test-only contract step: compatible with no older revision.

Revision ID: t_contract
"""

from __future__ import annotations

from alembic import op

from jotc_migrations.cli import product_head

revision: str = "t_contract"
down_revision: str | None = product_head()
compatible_back_to: str = revision


def upgrade() -> None:
    op.execute("COMMENT ON TABLE jump_requests IS 'contracted'")


def downgrade() -> None:
    op.execute("COMMENT ON TABLE jump_requests IS NULL")
