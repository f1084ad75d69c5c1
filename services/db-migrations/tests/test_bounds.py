"""Migrations that cannot stall traffic: a bounded wait for every lock, a statement timeout, and
the server-side work cancelled when the process is told to stop."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from conftest import Migrate

from jotc_migrations.bounds import MIGRATION_LOCK_KEY, Bounds
from jotc_migrations.cli import head_revision
from jotc_migrations.errors import EXIT_LOCK_NOT_ACQUIRED, EXIT_STATEMENT_TIMEOUT

Connection = psycopg.Connection[tuple[object, ...]]
REVISIONS = Path(__file__).parent / "revisions"
FAST_LOCKS = {"JOTC_MIGRATE_LOCK_TIMEOUT": "0.5", "JOTC_MIGRATE_LOCK_RETRIES": "2"}


def extra(scenario: str, **env: str) -> dict[str, str]:
    return {"JOTC_MIGRATE_EXTRA_VERSIONS": str(REVISIONS / scenario), **env}


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


def test_a_migration_behind_a_long_reader_retries_then_gives_up_without_blocking_writers(
    migrate: Migrate, database_url: str, db: Connection
) -> None:
    assert migrate("upgrade").returncode == 0
    with reader_holding_jump_requests(database_url):
        process = migrate.popen("upgrade", env=extra("expand", **FAST_LOCKS))
        slowest = 0.0
        inserts = 0
        while process.poll() is None:
            slowest = max(slowest, insert_row(db))
            inserts += 1
            time.sleep(0.02)
        _, stderr = process.communicate()
    assert process.returncode == EXIT_LOCK_NOT_ACQUIRED, stderr
    assert stderr.count("retrying in") == 2
    assert "gave up after 3 attempts" in stderr.splitlines()[-1]
    # Each attempt queues for lock_timeout at most; writers wait behind it no longer than that.
    assert inserts > 10
    assert slowest < 0.5 + 0.5, slowest
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)


def test_the_migration_succeeds_once_the_reader_is_gone(
    migrate: Migrate, database_url: str, db: Connection
) -> None:
    assert migrate("upgrade").returncode == 0
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
    assert process.returncode == 0, said + rest
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("t_expand",)


def test_the_migration_lock_is_awaited_with_a_deadline(migrate: Migrate, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        started = time.monotonic()
        result = migrate("upgrade", env={"JOTC_MIGRATE_LOCK_WAIT_SECONDS": "2"})
        elapsed = time.monotonic() - started
    assert result.returncode == EXIT_LOCK_NOT_ACQUIRED
    assert "still held after 2 s" in result.stderr
    assert 2 <= elapsed < 10


def test_a_statement_past_its_timeout_is_rolled_back(migrate: Migrate, db: Connection) -> None:
    assert migrate("upgrade").returncode == 0
    started = time.monotonic()
    result = migrate(
        "upgrade",
        env=extra("slow", JOTC_MIGRATE_STATEMENT_TIMEOUT="1", JOTC_TEST_SLOW_ASKS_NOTHING="1"),
    )
    assert result.returncode == EXIT_STATEMENT_TIMEOUT, result.stderr
    assert "statement_timeout" in result.stderr.splitlines()[-1]
    assert time.monotonic() - started < 15
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)


def test_sigterm_cancels_the_statement_on_the_server(migrate: Migrate, db: Connection) -> None:
    assert migrate("upgrade").returncode == 0
    # The session allows 1 s per statement; t_slow raises its own allowance to 120 s.
    process = migrate.popen("upgrade", env=extra("slow", JOTC_MIGRATE_STATEMENT_TIMEOUT="1"))
    deadline = time.monotonic() + 30
    while not running_sleeps(db):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the slow migration never started"
        time.sleep(0.1)
    time.sleep(2)  # past the session's statement_timeout: still running, as it asked
    assert running_sleeps(db) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    assert "stopped by SIGTERM" in process.communicate()[1]
    deadline = time.monotonic() + 5
    while running_sleeps(db) or advisory_locks(db):
        assert time.monotonic() < deadline, "the server is still running the migration"
        time.sleep(0.1)
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)


def running_sleeps(db: Connection) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jotc-migrate' "
        "AND state = 'active' AND query LIKE '%pg_sleep%' AND datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def advisory_locks(db: Connection) -> int:
    # This database's only: other tests' databases (and the API's erasures) hold advisory locks too.
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return int(row[0]) if row else 0


def test_bad_bound_settings_are_named() -> None:
    with pytest.raises(Exception, match="JOTC_MIGRATE_LOCK_TIMEOUT"):
        Bounds.from_env({"JOTC_MIGRATE_LOCK_TIMEOUT": "soon"})


def test_worst_case_of_the_defaults_fits_the_charts_job_deadline() -> None:
    assert Bounds().worst_case_seconds() < 240
