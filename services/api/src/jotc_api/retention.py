"""jotc-retention: delete recorded requests older than JOTC_RETENTION_DAYS, in short chunks.

A one-shot command the deployment schedules (the chart's CronJob, Compose's
``retention`` service, ``scripts/dev retention``); never a timer inside the
API. Each chunk is its own short transaction:

1. delete up to ``JOTC_RETENTION_CHUNK_ROWS`` of the oldest requests older
   than the cutoff (``now() - JOTC_RETENTION_DAYS days``, fixed when the run starts);
2. lock the statistics rows of the users they belonged to, in user order (the
   recorder's order, so no deadlock), subtract what was deleted, and delete
   the rows that reach 0; triggers keep ``stats_totals`` true in the same transaction.

So statistics stay exactly the statistics of the requests that remain:
``requests`` counts a user's kept requests, a user with none left has no row,
and ``last_request_at`` (the newest request) is unchanged, since retention only
ever removes a user's oldest requests.

Exit codes: 0 done (or JOTC_RETENTION_DAYS unset: retention off), 1 a database
error, 2 a bad setting or PostgreSQL unreachable. One line on stderr says what
happened.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

from jotc_api import tracing
from jotc_api.settings import SettingsError, database_url, integer

DEFAULT_CHUNK_ROWS: Final = 5000

# Each chunk's bounds, set for its own transaction only (SET LOCAL), so the command runs alike on
# PostgreSQL itself and through a transaction-mode pooler, which refuses the `options` start-up
# parameter and would carry a session's settings over to other clients.
BOUNDS: Final = "SELECT set_config('statement_timeout', '120s', true), set_config('lock_timeout', '30s', true)"

# The oldest rows first, through ix_jump_requests_created_at_id; ctid deletes them where they lie.
DELETE_CHUNK: Final = """
    WITH gone AS (
        DELETE FROM jump_requests WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM jump_requests WHERE created_at < %(cutoff)s
            ORDER BY created_at LIMIT %(rows)s
        ))
        RETURNING user_name
    )
    SELECT user_name, count(*) FROM gone GROUP BY user_name ORDER BY user_name
"""
LOCK_STATS: Final = """
    SELECT user_name FROM user_stats WHERE user_name = ANY(%(users)s) ORDER BY user_name FOR UPDATE
"""
SUBTRACT: Final = """
    UPDATE user_stats AS stats SET requests = stats.requests - gone.deleted
    FROM unnest(%(users)s::text[], %(counts)s::bigint[]) AS gone(user_name, deleted)
    WHERE stats.user_name = gone.user_name AND stats.requests > gone.deleted
"""
DROP_EMPTY: Final = """
    DELETE FROM user_stats AS stats
    USING unnest(%(users)s::text[], %(counts)s::bigint[]) AS gone(user_name, deleted)
    WHERE stats.user_name = gone.user_name AND stats.requests <= gone.deleted
"""


@dataclass(frozen=True, slots=True)
class Retention:
    database_url: str
    days: int | None  # None: retention is off
    chunk_rows: int = DEFAULT_CHUNK_ROWS


@dataclass(frozen=True, slots=True)
class Outcome:
    cutoff: datetime
    deleted: int
    users_emptied: int
    seconds: float


def load_retention(env: Mapping[str, str]) -> Retention:
    url = database_url(env).set(drivername="postgresql").render_as_string(hide_password=False)
    days_raw = env.get("JOTC_RETENTION_DAYS", "").strip()
    days = integer(env, "JOTC_RETENTION_DAYS", 0, 0, 36_500) if days_raw else 0
    chunk = integer(env, "JOTC_RETENTION_CHUNK_ROWS", DEFAULT_CHUNK_ROWS, 100, 100_000)
    return Retention(url, days or None, chunk)


def apply_retention(connection: psycopg.Connection[Any], days: int, chunk_rows: int) -> Outcome:
    """Delete every request older than ``days`` days, chunk by chunk; see the module docstring."""
    started = time.monotonic()
    cutoff = connection.execute("SELECT now() - make_interval(days => %s)", (days,)).fetchone()
    connection.commit()
    assert cutoff is not None
    deleted = emptied = 0
    while True:
        with tracing.span("retention chunk"), connection.transaction():
            connection.execute(BOUNDS)
            gone = connection.execute(DELETE_CHUNK, {"cutoff": cutoff[0], "rows": chunk_rows}).fetchall()
            if gone:
                users = [row[0] for row in gone]
                counts = [row[1] for row in gone]
                connection.execute(LOCK_STATS, {"users": users})
                # Those left with nothing first: once SUBTRACT has run, "requests <= deleted" means another thing.
                emptied += connection.execute(DROP_EMPTY, {"users": users, "counts": counts}).rowcount
                connection.execute(SUBTRACT, {"users": users, "counts": counts})
        chunk = sum(row[1] for row in gone)
        deleted += chunk
        if chunk < chunk_rows:
            return Outcome(cutoff[0], deleted, emptied, time.monotonic() - started)


def main() -> None:
    try:
        retention = load_retention(os.environ)
        tracing.configure("jotc-retention")  # on when OTEL_* ask for it (tracing.py)
    except (SettingsError, tracing.TracingError) as exc:
        print(f"jotc-retention: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        with tracing.span("retention run", {"jotc.retention.days": retention.days or 0}):
            run(retention)
    finally:
        tracing.shutdown()  # the run's spans are exported before the process ends


def run(retention: Retention) -> None:
    if retention.days is None:
        print("jotc-retention: JOTC_RETENTION_DAYS is not set; recorded requests are kept forever", file=sys.stderr)
        return
    try:
        with psycopg.connect(
            retention.database_url,
            connect_timeout=10,
            application_name="jotc-retention",
            prepare_threshold=None,  # nothing prepared on the server: a pooler may switch it between statements
        ) as connection:
            outcome = apply_retention(connection, retention.days, retention.chunk_rows)
    except psycopg.OperationalError as exc:
        print(f"jotc-retention: PostgreSQL unavailable: {first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except psycopg.Error as exc:
        print(f"jotc-retention: failed, the chunk in progress was rolled back: {first_line(exc)}", file=sys.stderr)
        sys.exit(1)
    print(
        f"jotc-retention: deleted {outcome.deleted} requests recorded before {outcome.cutoff.isoformat()} "
        f"({retention.days} days); {outcome.users_emptied} users had none left; {outcome.seconds:.1f} s",
        file=sys.stderr,
    )


def first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
