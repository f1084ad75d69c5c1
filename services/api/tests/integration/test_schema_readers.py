"""/readyz has a ready worker report the revision it serves into jotc_schema_readers (readiness.py),
which jotc-migrate's release guard reads: beside the probe, about once per READER_REPORT_SECONDS,
and never at the cost of the probe's answer (no table, or a write stuck behind a lock)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import psycopg
from jotc_provision import wait_until
from support import fresh_database, in_process

from jotc_api.tables import SCHEMA_REVISION


def readers(url: str) -> dict[str, datetime]:
    with psycopg.connect(url, autocommit=True) as connection:
        return dict(connection.execute("SELECT revision, seen_at FROM jotc_schema_readers").fetchall())


def failed_reports(http: Any) -> float:
    found = re.search(r"^jotc_schema_reader_reports_failed_total ([0-9.e+]+)$", http.get("/metrics").text, re.M)
    return float(found[1]) if found else 0.0


def test_a_ready_worker_reports_the_revision_it_serves_once_per_interval() -> None:
    with fresh_database() as url, in_process(url) as http:
        assert readers(url) == {}, "jotc-migrate makes the table empty; only serving workers fill it"
        assert http.get("/readyz").status_code == 200
        wait_until(lambda: bool(readers(url)), timeout=10, what="the report of the revision served")
        first = readers(url)
        assert list(first) == [SCHEMA_REVISION]
        for _ in range(5):
            assert http.get("/readyz").status_code == 200
        assert readers(url) == first, "a second report within the interval"


def test_a_database_without_the_table_is_still_served_and_no_report_fails() -> None:
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("DROP TABLE jotc_schema_readers")
        with in_process(url) as http:
            before = failed_reports(http)
            response = http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["schema"]["status"] == "ok"
            time.sleep(0.5)  # the report's own time (it runs beside the probe), for a failure to be counted
            assert failed_reports(http) == before, "an absent table is a database from before the guard, not a failure"


def test_a_report_stuck_behind_a_lock_gives_up_counted_and_the_probe_is_still_ready() -> None:
    with fresh_database() as url, psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE jotc_schema_readers IN ACCESS EXCLUSIVE MODE")  # until rollback
        with in_process(url) as http:
            before = failed_reports(http)
            response = http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["database"]["status"] == "ok"
            wait_until(lambda: failed_reports(http) > before, timeout=10, what="the failed report counted")
        holder.rollback()
        assert readers(url) == {}, "the report that gave up wrote nothing"
