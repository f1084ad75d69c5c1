"""jotc-retention against real PostgreSQL: old requests go, in chunks, and statistics and totals stay
exactly those of what remains. Its main() runs in process; the command itself runs once."""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import redirect_stderr
from unittest import mock

import psycopg
from support import BIN, agreement, fresh_database, plant

from jotc_api import retention as jotc_retention


def retention(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """jotc-retention's main() in this process: its exit status and what it wrote to stderr."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("JOTC_RETENTION_")}
    patched = mock.patch.dict(os.environ, {**environ, "DATABASE_URL": url, **env}, clear=True)
    with patched, redirect_stderr(io.StringIO()) as said:
        try:
            jotc_retention.main()
            status = 0
        except SystemExit as exited:
            status = int(exited.code or 0)
    return subprocess.CompletedProcess(["jotc-retention"], status, "", said.getvalue())


def test_the_command_runs_and_says_retention_is_off_unless_configured() -> None:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("JOTC_RETENTION_")}
    ran = subprocess.run(
        [str(BIN / "jotc-retention")],
        env={**environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (ran.returncode, ran.stderr.count("\n")) == (0, 1), ran.stderr
    assert "kept forever" in ran.stderr


def test_retention_removes_old_requests_and_keeps_statistics_true() -> None:
    with fresh_database() as url:
        plant(url, "old@example.com", 700, age="40 days")  # all older than 30 days
        plant(url, "mixed@example.com", 300, age="40 days")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at) "
                "SELECT gen_random_uuid(), 'mixed@example.com', 7, 2, '\\x00'::bytea, 3, now() - i * interval '1 hour' "
                "FROM generate_series(1, 50) AS i"
            )
            db.execute(
                "UPDATE user_stats SET requests = requests + 50, last_request_at = (SELECT max(created_at) "
                "FROM jump_requests WHERE user_name = 'mixed@example.com') WHERE user_name = 'mixed@example.com'"
            )
        plant(url, "new@example.com", 20, age="2 days")
        assert agreement(url)["mismatched"] == 0

        result = retention(url, JOTC_RETENTION_DAYS="30", JOTC_RETENTION_CHUNK_ROWS="100")
        assert result.returncode == 0, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "deleted 1000 requests" in result.stderr
        assert "1 users had none left" in result.stderr

        with psycopg.connect(url) as db:
            stats = dict(db.execute("SELECT user_name, requests FROM user_stats").fetchall())
            old = db.execute("SELECT count(*) FROM jump_requests WHERE created_at < now() - interval '30 days'")
            newest = db.execute(
                "SELECT s.last_request_at = max(r.created_at) FROM user_stats s JOIN jump_requests r USING (user_name) "
                "WHERE user_name = 'mixed@example.com' GROUP BY s.last_request_at"
            ).fetchone()
            assert old.fetchone() == (0,)
        assert stats == {"mixed@example.com": 50, "new@example.com": 20}
        assert newest == (True,)  # last_request_at is still the newest request kept
        state = agreement(url)
        assert state["mismatched"] == 0
        assert state["totals"] == state["counted"] == (70, 2)

        again = retention(url, JOTC_RETENTION_DAYS="30")
        assert again.returncode == 0
        assert "deleted 0 requests" in again.stderr


def test_retention_is_off_unless_configured_and_bad_settings_are_named() -> None:
    with fresh_database() as url:
        off = retention(url)
        assert off.returncode == 0
        assert "kept forever" in off.stderr
        bad = retention(url, JOTC_RETENTION_DAYS="a week")
        assert bad.returncode == 2
        assert "JOTC_RETENTION_DAYS" in bad.stderr
    unreachable = retention("postgresql://postgres@127.0.0.1:1/none", JOTC_RETENTION_DAYS="30")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("jotc-retention: PostgreSQL unavailable")
