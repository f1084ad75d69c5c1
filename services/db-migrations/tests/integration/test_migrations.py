"""jotc-migrate against real PostgreSQL: upgrade, downgrade, concurrency, head checks, waiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from jotc_provision import free_port, pgbouncer, wait_until
from sqlalchemy.engine import make_url
from support import Connection, Migrate, revision, unreachable_url

from jotc_migrations.cli import head_revision

SERVICE = Path(__file__).resolve().parents[2]
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def tables(db: Connection) -> set[str]:
    rows = db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def indexes(db: Connection, table: str) -> set[str]:
    rows = db.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
    return {str(row[0]) for row in rows}


def test_upgrade_from_empty_database_builds_the_schema(migrate: Migrate, db: Connection) -> None:
    result = migrate.ok("upgrade")
    assert "upgraded from empty to" in result.stderr, result.stderr
    found = tables(db)
    assert {"jump_requests", "user_stats", "alembic_version"} <= found, f"tables: {found}"
    assert revision(db) == [head_revision()], "alembic_version is not at this build's head"
    columns = db.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'jump_requests' ORDER BY ordinal_position"
    ).fetchall()
    assert columns == [
        ("id", "uuid", "NO"),
        ("user_name", "text", "NO"),
        ("n", "integer", "NO"),
        ("max_jump", "smallint", "NO"),
        ("clouds", "bytea", "NO"),
        ("jumps", "integer", "NO"),
        ("created_at", "timestamp with time zone", "NO"),
    ], "jump_requests' columns (name, type, nullable) differ from the schema's"
    keyset = {"ix_jump_requests_created_at_id", "ix_jump_requests_user_created_at_id"}
    found = indexes(db, "jump_requests")
    assert keyset <= found, f"jump_requests lacks {keyset - found}"
    wanted = {"ix_user_stats_requests_user", "ix_user_stats_last_request_at_user"}
    found = indexes(db, "user_stats")
    assert wanted <= found, f"user_stats lacks {wanted - found}"


def test_default_command_is_upgrade(migrate: Migrate, db: Connection) -> None:
    migrate.ok()
    assert revision(db) == [head_revision()], "jotc-migrate without a command did not upgrade"


def test_second_upgrade_has_nothing_to_do(migrate: Migrate) -> None:
    migrate.ok("upgrade")
    again = migrate.ok("upgrade")
    assert "nothing to do" in again.stderr, again.stderr


def test_downgrade_to_base_then_upgrade_again(migrate: Migrate, db: Connection) -> None:
    migrate.ok("upgrade")
    # Nothing serves an empty schema: the guard lets it through only when asked (test_serving.py).
    migrate.ok("downgrade", "base", "--allow-breaking")
    left = tables(db)
    bookkeeping = {"alembic_version", "jotc_schema_compat", "jotc_schema_readers"}
    assert left <= bookkeeping, f"downgrade to base left {left - bookkeeping}"
    assert revision(db) == [], "alembic_version after downgrade to base"
    compat_rows = db.execute("SELECT count(*) FROM jotc_schema_compat").fetchone()
    assert compat_rows == (0,), f"compatibility records left after downgrade: {compat_rows}"
    emptied = migrate("check")
    assert emptied.returncode == 1, f"check after downgrade to base: exit {emptied.returncode}"
    assert "no JOTC schema yet" in emptied.stderr, emptied.stderr
    migrate.ok("upgrade")
    found = tables(db)
    assert {"jump_requests", "user_stats"} <= found, f"tables after upgrading again: {found}"
    assert revision(db) == [head_revision()], "alembic_version after upgrading again"


def test_concurrent_upgrades_all_succeed_and_leave_one_schema(
    migrate: Migrate, db: Connection
) -> None:
    processes = [migrate.popen("upgrade") for _ in range(6)]
    outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    assert [code for code, _ in outcomes] == [0] * 6, f"exit codes and stderr: {outcomes}"
    upgraded = [err for _, err in outcomes if "upgraded from empty" in err]
    idle = [err for _, err in outcomes if "nothing to do" in err]
    assert (len(upgraded), len(idle)) == (1, 5), f"expected 1 upgrade and 5 idle: {outcomes}"
    assert revision(db) == [head_revision()], "alembic_version after concurrent upgrades"
    found = tables(db)
    assert {"jump_requests", "user_stats"} <= found, f"tables after concurrent upgrades: {found}"


def test_check_exit_codes_before_and_after_upgrade(migrate: Migrate, db: Connection) -> None:
    # An unknown revision (no compatibility record) is refused; test_compat.py has the window.
    before = migrate("check")
    assert before.returncode == 1, f"check of an empty database: exit {before.returncode}"
    assert "no JOTC schema yet" in before.stderr, before.stderr
    assert len(before.stderr.strip().splitlines()) == 1, f"not one line: {before.stderr}"

    migrate.ok("upgrade")
    migrate.ok("check")

    db.execute("UPDATE alembic_version SET version_num = 'ffff'")
    unknown = migrate("check")
    assert unknown.returncode == 1, f"check of an unknown revision: exit {unknown.returncode}"
    assert "ffff" in unknown.stderr, unknown.stderr
    assert "no compatibility record" in unknown.stderr, unknown.stderr


def sessions(db: Connection) -> int:
    """Sessions ever opened to this database (pg_stat_database, PostgreSQL 14+). A backend
    publishes its session when it first goes idle, just after connecting."""
    row = db.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def test_check_waits_for_a_concurrent_upgrade(migrate: Migrate, db: Connection) -> None:
    before = sessions(db)
    checker = migrate.popen("check", "--wait", "60")
    # check opens a new session for each look. A second one means the first look is over: it
    # saw the empty database and kept waiting instead of giving up.
    wait_until(
        lambda: checker.poll() is not None or sessions(db) >= before + 2,
        timeout=60,
        what="jotc-migrate check looking at the database a second time",
    )
    assert checker.poll() is None, (
        f"check gave up before the schema reached head: {checker.communicate()}"
    )
    migrate.ok("upgrade")
    assert checker.wait(timeout=30) == 0, f"check after the upgrade: {checker.communicate()}"


def test_an_unknown_revision_is_a_one_line_error(migrate: Migrate) -> None:
    result = migrate("downgrade", "nosuchrevision")
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {result.stderr}"
    assert "nosuchrevision" in lines[0], lines[0]


def test_a_connection_through_a_pooler_is_refused_in_one_line_and_nothing_changes(
    database_url: str, db: Connection, tmp_path: Path
) -> None:
    """PgBouncer in transaction mode would hand the migration's session (its lock, its timeouts)
    to other clients: jotc-migrate names the problem and leaves the database as it was."""
    server = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    with pgbouncer(tmp_path / "pgbouncer", server) as pooler:
        for command in (("upgrade",), ("downgrade", "base")):
            result = Migrate(pooler.url(database_url))(*command)
            assert result.returncode == 2, f"{command}: exit {result.returncode}: {result.stderr}"
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, f"{command}: not one line: {result.stderr}"
            assert "pooler" in lines[0], lines[0]
            assert "direct connection" in lines[0], lines[0]
    assert tables(db) == set(), "nothing was created"
    Migrate(database_url).ok("upgrade")  # the same database, reached directly


def alembic(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Plain `alembic` with this service's alembic.ini, as a developer runs it."""
    return subprocess.run(
        [ALEMBIC, "-c", str(SERVICE / "alembic.ini"), *args],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=SERVICE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plain_alembic_connects_to_database_url_itself(database_url: str, db: Connection) -> None:
    result = alembic("upgrade", "head", database_url=database_url)
    assert result.returncode == 0, (
        f"alembic upgrade head: exit {result.returncode}: {result.stderr}"
    )
    assert revision(db) == [head_revision()], "plain alembic did not reach this build's head"
    found = db.execute("SELECT revision FROM jotc_schema_compat ORDER BY position").fetchall()
    assert found[-1] == (head_revision(),), f"plain alembic recorded {found}"


def test_offline_sql_is_refused_with_a_reason(database_url: str) -> None:
    result = alembic("upgrade", "head", "--sql", database_url=database_url)
    assert result.returncode != 0, "alembic --sql should be refused"
    said = result.stderr.strip().splitlines()
    assert said, "alembic --sql said nothing"
    assert "offline (--sql) migrations are not supported" in said[-1], result.stderr


def test_check_of_an_unreachable_database_exits_2() -> None:
    result = Migrate(unreachable_url())("check")
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    assert "not reachable" in result.stderr, result.stderr


def test_missing_database_url_is_a_one_line_error() -> None:
    result = Migrate("")("upgrade")
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    assert result.stderr.strip() == (
        "jotc-migrate: DATABASE_URL is not set; "
        "expected e.g. postgresql://user:password@host:5432/jotc"
    ), f"said {result.stderr!r}"


def test_non_postgres_url_is_rejected() -> None:
    result = Migrate("mysql://root@localhost/jotc")("upgrade")
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    assert "must be a postgresql:// URL" in result.stderr, result.stderr


def test_bad_wait_setting_is_named() -> None:
    result = Migrate(unreachable_url())("upgrade", env={"JOTC_MIGRATE_WAIT_SECONDS": "soon"})
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    assert "JOTC_MIGRATE_WAIT_SECONDS" in result.stderr, result.stderr


def test_unreachable_database_is_retried_then_fails_clearly() -> None:
    url = unreachable_url()
    started = time.monotonic()
    result = Migrate(url)("upgrade", "--wait", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 2, f"exit {result.returncode}, expected 2: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    retries = sum("waiting for PostgreSQL" in line for line in lines)
    assert retries >= 2, f"{retries} retry lines, expected 2 or more: {result.stderr}"
    assert "not reachable after 2 s" in lines[-1], result.stderr
    assert elapsed >= 2, f"gave up after {elapsed:.1f} s of a 2 s wait"


def test_database_that_appears_while_waiting_is_migrated(database_url: str, db: Connection) -> None:
    target = make_url(database_url)
    opened = threading.Event()
    with forwarder(opened, target.host or "127.0.0.1", target.port or 5432) as port:
        late = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        process = Migrate(late).popen("upgrade", "--wait", "60")
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "waiting for PostgreSQL" in first, f"first line: {first!r}"
        opened.set()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    assert revision(db) == [head_revision()], "the late database was not migrated"


@contextmanager
def forwarder(opened: threading.Event, host: str, port: int) -> Iterator[int]:
    """A TCP port that refuses connections until `opened` is set, then forwards to host:port."""
    listen_port = free_port()
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()
            source.close()

    def serve() -> None:
        while not opened.wait(0.1):
            if stop.is_set():
                return
        with socket.create_server(("127.0.0.1", listen_port)) as server:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection((host, port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listen_port
    finally:
        stop.set()
        thread.join(timeout=5)


VALID = {
    "id": "01930000-0000-7000-8000-000000000001",
    "user_name": "ada@example.com",
    "n": 7,
    "max_jump": 2,
    "clouds": b"\x24",  # 0 0 1 0 0 1 0, least significant bit first
    "jumps": 4,
}


def insert_request(db: Connection, **overrides: object) -> None:
    row = {**VALID, **overrides}
    db.execute(
        "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps) "
        "VALUES (%(id)s, %(user_name)s, %(n)s, %(max_jump)s, %(clouds)s, %(jumps)s)",
        row,
    )


def test_a_valid_row_is_accepted(migrated: Connection) -> None:
    insert_request(migrated)
    bit = migrated.execute("SELECT get_bit(clouds, 2) FROM jump_requests").fetchone()
    assert bit == (1,), f"cloud 2 of 0 0 1 0 0 1 0 read back as {bit}: bit order is wrong"


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"user_name": ""}, "ck_jump_requests_user_name_length"),
        ({"user_name": "x" * 321}, "ck_jump_requests_user_name_length"),
        # n = 1 also breaks jumps <= n - 1, and PostgreSQL names the first failing CHECK.
        ({"n": 1, "clouds": b"\x00", "jumps": 1}, "ck_jump_requests_jumps_range"),
        ({"max_jump": 0}, "ck_jump_requests_max_jump_range"),
        ({"max_jump": 1001}, "ck_jump_requests_max_jump_range"),
        ({"jumps": 0}, "ck_jump_requests_jumps_range"),
        ({"jumps": 7}, "ck_jump_requests_jumps_range"),
        ({"clouds": b"\x24\x00"}, "ck_jump_requests_clouds_length"),
        ({"n": 9, "clouds": b"\x24"}, "ck_jump_requests_clouds_length"),
        ({"clouds": b"\x25"}, "ck_jump_requests_clouds_ends_safe"),
        ({"clouds": b"\x64"}, "ck_jump_requests_clouds_ends_safe"),
    ],
)
def test_jump_requests_constraints_reject_what_the_contract_forbids(
    migrated: Connection, overrides: dict[str, object], constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught, migrated.transaction():
        insert_request(migrated, **overrides)
    named = caught.value.diag.constraint_name
    assert named == constraint, f"{overrides} broke {named}, expected {constraint}"


@pytest.mark.parametrize(
    ("column", "value"), [("user_name", None), ("n", None), ("clouds", None), ("jumps", None)]
)
def test_jump_requests_columns_are_not_null(
    migrated: Connection, column: str, value: object
) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation), migrated.transaction():
        insert_request(migrated, **{column: value})


def test_jump_request_ids_are_unique(migrated: Connection) -> None:
    insert_request(migrated)
    with pytest.raises(psycopg.errors.UniqueViolation), migrated.transaction():
        insert_request(migrated)


@pytest.mark.parametrize(
    ("user_name", "requests", "constraint"),
    [
        ("", 1, "ck_user_stats_user_name_length"),
        ("x" * 321, 1, "ck_user_stats_user_name_length"),
        ("ada", 0, "ck_user_stats_requests_positive"),
    ],
)
def test_user_stats_constraints(
    migrated: Connection, user_name: str, requests: int, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught, migrated.transaction():
        migrated.execute(
            "INSERT INTO user_stats (user_name, requests, last_request_at) VALUES (%s, %s, now())",
            (user_name, requests),
        )
    named = caught.value.diag.constraint_name
    assert named == constraint, f"{user_name!r}, {requests}: broke {named}, expected {constraint}"


def test_user_stats_one_row_per_user(migrated: Connection) -> None:
    insert = (
        "INSERT INTO user_stats (user_name, requests, last_request_at) VALUES ('ada', 1, now())"
    )
    migrated.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation), migrated.transaction():
        migrated.execute(insert)


def test_totals_are_backfilled_on_a_populated_database_and_kept_by_triggers(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    migrate.ok("downgrade", "0001", "--serving", "0001")  # a database of the previous release
    db.execute(
        "INSERT INTO user_stats (user_name, requests, last_request_at) "
        "SELECT 'u' || i, i, now() FROM generate_series(1, 1000) AS i"
    )
    # 0003 is compatible back to 0002 only, so the guard would keep 0001's (absent) pods serving.
    migrate.ok("upgrade", "--allow-breaking")

    def totals() -> tuple[object, ...] | None:
        return db.execute("SELECT sum(requests), sum(users) FROM stats_totals").fetchone()

    assert totals() == (500500, 1000), "stats_totals backfilled wrong (requests, users)"
    # As the previous release writes (it knows nothing of stats_totals): the triggers count it.
    db.execute(
        "INSERT INTO user_stats AS s (user_name, requests, last_request_at) "
        "VALUES ('u1', 5, now()), ('new', 2, now()) ON CONFLICT (user_name) DO UPDATE "
        "SET requests = s.requests + excluded.requests"
    )
    db.execute("DELETE FROM user_stats WHERE user_name = 'u1000'")
    db.execute("UPDATE user_stats SET requests = requests - 1 WHERE user_name = 'u2'")
    assert totals() == (500500 + 5 + 2 - 1000 - 1, 1000), "the triggers kept wrong totals"
    scanned = db.execute("SELECT sum(requests), count(*) FROM user_stats").fetchone()
    assert totals() == scanned, f"stats_totals {totals()} differ from user_stats {scanned}"
    migrate.ok("downgrade", "0001", "--serving", "0001")
    assert "stats_totals" not in tables(db), "downgrade to 0001 left stats_totals"
