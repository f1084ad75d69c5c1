"""jotc-migrate against real PostgreSQL: upgrade, downgrade, concurrency, head checks, waiting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import Migrate, server_url
from sqlalchemy.engine import make_url

from jotc_migrations.cli import head_revision

Connection = psycopg.Connection[tuple[object, ...]]


def tables(db: Connection) -> set[str]:
    rows = db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def indexes(db: Connection, table: str) -> set[str]:
    rows = db.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
    return {str(row[0]) for row in rows}


def revision(db: Connection) -> list[str]:
    return [str(row[0]) for row in db.execute("SELECT version_num FROM alembic_version")]


def test_upgrade_from_empty_database_builds_the_schema(migrate: Migrate, db: Connection) -> None:
    result = migrate("upgrade")
    assert result.returncode == 0, result.stderr
    assert "upgraded from empty to" in result.stderr
    assert {"jump_requests", "user_stats", "alembic_version"} <= tables(db)
    assert revision(db) == [head_revision()]
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
    ]
    assert {
        "ix_jump_requests_created_at_id",
        "ix_jump_requests_user_created_at_id",
    } <= indexes(db, "jump_requests")
    assert {"ix_user_stats_requests_user", "ix_user_stats_last_request_at_user"} <= indexes(
        db, "user_stats"
    )


def test_default_command_is_upgrade(migrate: Migrate, db: Connection) -> None:
    assert migrate().returncode == 0
    assert revision(db) == [head_revision()]


def test_second_upgrade_has_nothing_to_do(migrate: Migrate) -> None:
    assert migrate("upgrade").returncode == 0
    again = migrate("upgrade")
    assert again.returncode == 0
    assert "nothing to do" in again.stderr


def test_downgrade_to_base_then_upgrade_again(migrate: Migrate, db: Connection) -> None:
    assert migrate("upgrade").returncode == 0
    down = migrate("downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert tables(db) <= {"alembic_version", "jotc_schema_compat"}  # bookkeeping, like Alembic's
    assert revision(db) == []
    assert db.execute("SELECT count(*) FROM jotc_schema_compat").fetchone() == (0,)
    up = migrate("upgrade")
    assert up.returncode == 0, up.stderr
    assert {"jump_requests", "user_stats"} <= tables(db)
    assert revision(db) == [head_revision()]


def test_concurrent_upgrades_all_succeed_and_leave_one_schema(
    migrate: Migrate, db: Connection
) -> None:
    processes = [migrate.popen("upgrade") for _ in range(6)]
    outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    assert [code for code, _ in outcomes] == [0] * 6, outcomes
    upgraded = [err for _, err in outcomes if "upgraded from empty" in err]
    idle = [err for _, err in outcomes if "nothing to do" in err]
    assert (len(upgraded), len(idle)) == (1, 5), outcomes
    assert revision(db) == [head_revision()]
    assert {"jump_requests", "user_stats"} <= tables(db)


def test_check_exit_codes_before_and_after_upgrade(migrate: Migrate, db: Connection) -> None:
    # An unknown revision (no compatibility record) is refused; test_compat.py has the window.
    before = migrate("check")
    assert before.returncode == 1
    assert "no JOTC schema yet" in before.stderr
    assert len(before.stderr.strip().splitlines()) == 1

    assert migrate("upgrade").returncode == 0
    after = migrate("check")
    assert after.returncode == 0, after.stderr

    db.execute("UPDATE alembic_version SET version_num = 'ffff'")
    unknown = migrate("check")
    assert unknown.returncode == 1
    assert "ffff" in unknown.stderr
    assert "no compatibility record" in unknown.stderr


def test_check_waits_for_a_concurrent_upgrade(migrate: Migrate) -> None:
    checker = migrate.popen("check", "--wait", "60")
    time.sleep(1.5)
    assert checker.poll() is None, "check gave up before the schema reached head"
    assert migrate("upgrade").returncode == 0
    assert checker.wait(timeout=30) == 0


def test_check_of_an_unreachable_database_exits_2() -> None:
    result = Migrate(unreachable_url())("check")
    assert result.returncode == 2
    assert "not reachable" in result.stderr


def test_missing_database_url_is_a_one_line_error() -> None:
    result = Migrate("")("upgrade")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "jotc-migrate: DATABASE_URL is not set; "
        "expected e.g. postgresql://user:password@host:5432/jotc"
    )


def test_non_postgres_url_is_rejected() -> None:
    result = Migrate("mysql://root@localhost/jotc")("upgrade")
    assert result.returncode == 2
    assert "must be a postgresql:// URL" in result.stderr


def test_bad_wait_setting_is_named() -> None:
    result = Migrate(unreachable_url())("upgrade", env={"JOTC_MIGRATE_WAIT_SECONDS": "soon"})
    assert result.returncode == 2
    assert "JOTC_MIGRATE_WAIT_SECONDS" in result.stderr


def test_unreachable_database_is_retried_then_fails_clearly() -> None:
    url = unreachable_url()
    started = time.monotonic()
    result = Migrate(url)("upgrade", "--wait", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert sum("waiting for PostgreSQL" in line for line in lines) >= 2
    assert "not reachable after 2 s" in lines[-1]
    assert elapsed >= 2


def test_database_that_appears_while_waiting_is_migrated(database_url: str, db: Connection) -> None:
    target = make_url(database_url)
    opened = threading.Event()
    with forwarder(opened, target.host or "127.0.0.1", target.port or 5432) as port:
        late = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        process = Migrate(late).popen("upgrade", "--wait", "60")
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "waiting for PostgreSQL" in first
        opened.set()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    assert revision(db) == [head_revision()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable_url() -> str:
    return server_url().set(host="127.0.0.1", port=free_port()).render_as_string(False)


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
    assert migrated.execute("SELECT get_bit(clouds, 2) FROM jump_requests").fetchone() == (1,)


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
    assert caught.value.diag.constraint_name == constraint


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
    assert caught.value.diag.constraint_name == constraint


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
    assert migrate("upgrade").returncode == 0
    assert migrate("downgrade", "0001").returncode == 0  # a database of the previous release
    db.execute(
        "INSERT INTO user_stats (user_name, requests, last_request_at) "
        "SELECT 'u' || i, i, now() FROM generate_series(1, 1000) AS i"
    )
    up = migrate("upgrade")
    assert up.returncode == 0, up.stderr

    def totals() -> tuple[object, ...] | None:
        return db.execute("SELECT sum(requests), sum(users) FROM stats_totals").fetchone()

    assert totals() == (500500, 1000)
    # As the previous release writes (it knows nothing of stats_totals): the triggers count it.
    db.execute(
        "INSERT INTO user_stats AS s (user_name, requests, last_request_at) "
        "VALUES ('u1', 5, now()), ('new', 2, now()) ON CONFLICT (user_name) DO UPDATE "
        "SET requests = s.requests + excluded.requests"
    )
    db.execute("DELETE FROM user_stats WHERE user_name = 'u1000'")
    db.execute("UPDATE user_stats SET requests = requests - 1 WHERE user_name = 'u2'")
    assert totals() == (500500 + 5 + 2 - 1000 - 1, 1000)
    assert totals() == db.execute("SELECT sum(requests), count(*) FROM user_stats").fetchone()
    down = migrate("downgrade", "0001")
    assert down.returncode == 0, down.stderr
    assert "stats_totals" not in tables(db)
