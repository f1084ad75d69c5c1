"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = None
depends_on: str | None = None
# The oldest application schema revision whose code still works after this migration: the
# previous head for an expand step (the running release keeps serving during the upgrade and
# after a rollback), this revision itself only for a contract step whose code is already gone.
# See the README's "Compatibility window" before changing it.
compatible_back_to: str = ${repr(down_revision)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
