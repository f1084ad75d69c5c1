"""Test-only slow step: a minute of server-side work. It raises its own statement_timeout to
120 s, unless JOTC_TEST_SLOW_ASKS_NOTHING is set (a migration that forgot to).

Revision ID: t_slow
"""

from __future__ import annotations

import os

from alembic import op

from jotc_migrations.bounds import allow_statement_seconds
from jotc_migrations.cli import product_head

revision: str = "t_slow"
down_revision: str | None = product_head()
compatible_back_to: str | None = down_revision


def upgrade() -> None:
    if not os.environ.get("JOTC_TEST_SLOW_ASKS_NOTHING"):
        allow_statement_seconds(120)
    # The sleep is the behaviour under test (a long migration), not a wait for anything.
    op.execute("SELECT pg_sleep(60)")


def downgrade() -> None:
    pass
