"""jotc-retention against real PostgreSQL: old requests go, in chunks, and statistics and totals stay
exactly those of what remains."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from conftest import BIN, fresh_database
from test_erasure_at_scale import agreement, plant


def retention(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "jotc-retention")],
        env={**os.environ, "DATABASE_URL": url, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_retention_removes_old_requests_and_keeps_statistics_true(tmp_root: Path) -> None:
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


def test_retention_is_off_unless_configured_and_bad_settings_are_named(tmp_root: Path) -> None:
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
