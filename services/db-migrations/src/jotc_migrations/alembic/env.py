"""Alembic environment: runs migrations on the connection the jotc-migrate command hands over.

The command owns connecting, waiting for the database and the advisory lock;
this file only runs the scripts. Run through plain ``alembic`` (development),
it connects to DATABASE_URL itself.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from jotc_migrations.database import sqlalchemy_url


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, compare_type=True)
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
