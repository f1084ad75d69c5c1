"""Alembic environment: runs migrations on the connection the jotc-migrate command hands over.

The command owns connecting, waiting for the database, the advisory lock and the
session's timeouts; this file runs the scripts, each in its own transaction (so
a migration that gives up on a lock is retried alone, after the ones before it
committed), and records each revision's compatibility window in that same
transaction (``compat.py``). It also creates the table the API pods report the
revision they serve in (``serving.py``), so that the release guard of the next
run finds the pods of this one. Run through plain ``alembic`` (development), it
connects to DATABASE_URL itself.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from jotc_migrations import compat, serving
from jotc_migrations.database import sqlalchemy_url


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        compare_type=True,
        transaction_per_migration=True,
        on_version_apply=compat.on_version_apply,
    )
    current = context.get_context().get_current_revision()
    revisions = context.script.revision_map
    known = current is None or current in {
        script.revision for script in context.script.walk_revisions()
    }
    if known:
        compat.ensure_table(connection, current, revisions)
        serving.ensure_readers_table(connection)
    connection.commit()
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = create_engine(sqlalchemy_url(os.environ.get("DATABASE_URL")), poolclass=pool.NullPool)
    with engine.connect() as own_connection:
        run_on(own_connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_online()
