"""/readyz reports the revision a ready worker serves into jotc_schema_readers (readiness.py), which
jotc-migrate's release guard reads: at most once per READER_REPORT_SECONDS, and never at the cost of
the probe's answer (no table, or a write stuck behind a lock)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from support import fresh_database, in_process

from jotc_api.tables import SCHEMA_REVISION


def readers(url: str) -> dict[str, datetime]:
    with psycopg.connect(url, autocommit=True) as connection:
        return dict(connection.execute("SELECT revision, seen_at FROM jotc_schema_readers").fetchall())


def test_a_ready_worker_reports_the_revision_it_serves_once_per_interval() -> None:
    with fresh_database() as url, in_process(url) as http:
        assert readers(url) == {}, "jotc-migrate makes the table empty; only serving workers fill it"
        assert http.get("/readyz").status_code == 200
        first = readers(url)
        assert list(first) == [SCHEMA_REVISION]
        assert http.get("/readyz").status_code == 200
        assert readers(url) == first, "a second report within the interval"


def test_a_database_without_the_table_is_still_served_and_nothing_is_written() -> None:
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("DROP TABLE jotc_schema_readers")
        with in_process(url) as http:
            response = http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["schema"]["status"] == "ok"


def test_a_report_stuck_behind_a_lock_gives_up_and_the_probe_is_still_ready() -> None:
    with fresh_database() as url, psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE jotc_schema_readers IN ACCESS EXCLUSIVE MODE")  # until rollback
        with in_process(url) as http:
            response = http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["database"]["status"] == "ok"
        holder.rollback()
        assert readers(url) == {}, "the report that gave up wrote nothing"
