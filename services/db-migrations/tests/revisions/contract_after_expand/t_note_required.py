"""Test-only contract step after t_expand: client_note becomes NOT NULL, so code that does not
write it (the product head's) can no longer insert; t_expand's code, which writes it, can.

Revision ID: t_note_required
"""

from __future__ import annotations

from alembic import op

revision: str = "t_note_required"
down_revision: str | None = "t_expand"
compatible_back_to: str = "t_expand"


def upgrade() -> None:
    op.alter_column("jump_requests", "client_note", nullable=False)


def downgrade() -> None:
    op.alter_column("jump_requests", "client_note", nullable=True)
