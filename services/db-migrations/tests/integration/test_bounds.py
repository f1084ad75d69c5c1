"""Migrations that cannot stall traffic, against real PostgreSQL through jotc-migrate: a bounded
wait for every lock, a statement timeout, and the server-side work cancelled when the process is
told to stop. The rules themselves (settings, back-off, retry count): unit/test_bounds_rules.py."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from jotc_provision import wait_until
from support import Connection, Migrate, extra, revision

from jotc_migrations.bounds import MIGRATION_LOCK_KEY
from jotc_migrations.cli import head_revision
from jotc_migrations.errors import EXIT_LOCK_NOT_ACQUIRED, EXIT_STATEMENT_TIMEOUT

FAST_LOCKS = {"JOTC_MIGRATE_LOCK_TIMEOUT": "0.5", "JOTC_MIGRATE_LOCK_RETRIES": "2"}


@contextmanager
def reader_holding_jump_requests(database_url: str) -> Iterator[None]:
    """An open transaction that has read jump_requests: ACCESS SHARE until it ends, like a long
    admin listing or pg_dump."""
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM jump_requests")
        yield
        reader.rollback()


def insert_row(connection: Connection) -> float:
    """What the API's recorder does for one request; returns how long it took."""
    started = time.monotonic()
    connection.execute(
        "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps) "
        "VALUES (%s, 'ada', 7, 2, '\\x24'::bytea, 4)",
        (uuid.uuid4(),),
    )
    return time.monotonic() - started


def migration_queued(connection: Connection) -> bool:
    """Is jotc-migrate waiting for a lock on this database (queued behind the reader)?"""
    row = connection.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jotc-migrate' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    return bool(row and row[0])


def test_a_migration_behind_a_long_reader_retries_then_gives_up_without_blocking_writers(
    migrate: Migrate, database_url: str, db: Connection
) -> None:
    migrate.ok("upgrade")
    # A writer that waited for the migration to end would wait for ever (the reader outlives it):
    # its statement fails instead, and says so.
    db.execute("SET statement_timeout = '60s'")
    with reader_holding_jump_requests(database_url):
        process = migrate.popen("upgrade", env=extra("expand", **FAST_LOCKS))
        # Each insert: was the migration queued for its lock when it began; how long it took.
        inserts: list[tuple[bool, float]] = []

        def gave_up() -> bool:
            # A writer's insert on every poll, for as long as the migration keeps trying.
            queued = migration_queued(db)
            inserts.append((queued, insert_row(db)))
            return process.poll() is not None

        wait_until(
            gave_up, timeout=120, what="jotc-migrate giving up on the table lock", interval=0.01
        )
        _, stderr = process.communicate()
    assert process.returncode == EXIT_LOCK_NOT_ACQUIRED, (
        f"exit {process.returncode}, expected {EXIT_LOCK_NOT_ACQUIRED}: {stderr}"
    )
    assert stderr.count("retrying in") == 2, (
        f"expected 2 retries (JOTC_MIGRATE_LOCK_RETRIES=2): {stderr}"
    )
    assert "gave up after 3 attempts" in stderr.splitlines()[-1], stderr
    assert "(lock_timeout 0.5 s)" in stderr.splitlines()[-1], stderr
    # Each attempt queues for lock_timeout (0.5 s) at most, and a writer behind it no longer; every
    # insert went through. The bound is for a writer held until the migration ends, or for the
    # 5 s default lock_timeout of a run that ignored the one asked for: only they reach it.
    behind = [took for queued, took in inserts if queued]
    assert behind, (
        f"no insert was made while the migration queued for its lock ({len(inserts)} in all)"
    )
    slowest = max(took for _, took in inserts)
    assert slowest < 3, (
        f"an insert waited {slowest:.2f} s behind the migration (lock_timeout 0.5 s)"
    )
    assert revision(db) == [head_revision()], "the failed migration moved alembic_version"


def test_the_migration_succeeds_once_the_reader_is_gone(
    migrate: Migrate, database_url: str, db: Connection
) -> None:
    migrate.ok("upgrade")
    env = extra("expand", JOTC_MIGRATE_LOCK_TIMEOUT="0.5", JOTC_MIGRATE_LOCK_RETRIES="10")
    with reader_holding_jump_requests(database_url):
        process = migrate.popen("upgrade", env=env)
        assert process.stderr is not None
        said = ""
        while "retrying in" not in said:  # the migration has met the reader's lock: now let it go
            line = process.stderr.readline()
            assert line, f"the migration ended without retrying: {said}"
            said += line
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, f"exit {process.returncode} after the reader left: {said}{rest}"
    assert revision(db) == ["t_expand"], "the retried migration did not reach t_expand"


def test_the_migration_lock_is_awaited_with_a_deadline(migrate: Migrate, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        started = time.monotonic()
        process = migrate.popen("upgrade", env={"JOTC_MIGRATE_LOCK_WAIT_SECONDS": "2"})
        assert process.stderr is not None
        first = process.stderr.readline()
        # From its first refusal: the command's start-up (imports) is no part of the deadline.
        refused = time.monotonic()
        rest = process.communicate(timeout=60)[1]
        ended = time.monotonic()
    stderr = first + rest
    assert "holds the migration lock; waiting" in first, f"first line: {first!r}"
    assert process.returncode == EXIT_LOCK_NOT_ACQUIRED, (
        f"exit {process.returncode}, expected {EXIT_LOCK_NOT_ACQUIRED}: {stderr}"
    )
    assert "still held after 2 s" in stderr, stderr
    assert ended - started >= 2, f"gave up after {ended - started:.1f} s; the deadline was 2 s"
    # Only a wait past the deadline reaches the bound (the 60 s default of a run that ignored the
    # setting, or no deadline at all); stopping after it takes a fraction of a second.
    waited = ended - refused
    assert waited < 30, f"waited {waited:.1f} s for the lock; the deadline was 2 s"


def test_a_statement_past_its_timeout_is_rolled_back(migrate: Migrate, db: Connection) -> None:
    migrate.ok("upgrade")
    started = time.monotonic()
    result = migrate(
        "upgrade",
        env=extra("slow", JOTC_MIGRATE_STATEMENT_TIMEOUT="1", JOTC_TEST_SLOW_ASKS_NOTHING="1"),
    )
    elapsed = time.monotonic() - started
    assert result.returncode == EXIT_STATEMENT_TIMEOUT, (
        f"exit {result.returncode}, expected {EXIT_STATEMENT_TIMEOUT}: {result.stderr}"
    )
    assert "statement_timeout" in result.stderr.splitlines()[-1], result.stderr
    # The statement sleeps 60 s: half of that is reached only by a run the timeout did not stop.
    assert elapsed < 30, f"took {elapsed:.1f} s with a 1 s statement_timeout"
    assert revision(db) == [head_revision()], "the timed-out migration moved alembic_version"


def test_sigterm_cancels_the_statement_on_the_server(migrate: Migrate, db: Connection) -> None:
    migrate.ok("upgrade")
    # The session allows 1 s per statement; t_slow raises its own allowance to 120 s.
    process = migrate.popen("upgrade", env=extra("slow", JOTC_MIGRATE_STATEMENT_TIMEOUT="1"))

    def sleeping_for(seconds: float) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"jotc-migrate ended early: {process.communicate()}")
        return running_sleeps(db, longer_than=seconds) == 1

    wait_until(lambda: sleeping_for(0), timeout=30, what="the slow migration starting")
    # Past the session's 1 s statement_timeout: still running, as the migration asked. Read from
    # the server's clock (how long the statement has run), not a sleep here.
    wait_until(lambda: sleeping_for(2), timeout=30, what="the slow statement running past 2 s")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143, f"exit {process.returncode} on SIGTERM, expected 143"
    stderr = process.communicate()[1]
    assert "stopped by SIGTERM" in stderr, stderr
    wait_until(
        lambda: running_sleeps(db) == 0 and advisory_locks(db) == 0,
        timeout=5,
        what="the server ending the cancelled migration (its statement and the migration lock)",
    )
    assert revision(db) == [head_revision()], "the cancelled migration moved alembic_version"


def running_sleeps(db: Connection, longer_than: float = 0) -> int:
    """This database's jotc-migrate statements in pg_sleep that have run for longer_than s."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jotc-migrate' "
        "AND state = 'active' AND query LIKE '%%pg_sleep%%' AND datname = current_database() "
        "AND clock_timestamp() - query_start > make_interval(secs => %s)",
        (float(longer_than),),
    ).fetchone()
    return int(row[0]) if row else 0


def advisory_locks(db: Connection) -> int:
    # This database's only: other tests' databases (and the API's erasures) hold advisory locks too.
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return int(row[0]) if row else 0
