"""/readyz's checks: PostgreSQL and the schema on a connection of their own, and the answer's shape.

A worker whose schema check passes also reports, about every READER_REPORT_SECONDS while it is
probed, the revision it serves into ``jotc_schema_readers`` (a table jotc-migrate makes): the
release guard of ``jotc-migrate upgrade`` reads the revisions live pods report there, so a
migration cannot strand pods that still serve, whichever release they belong to. The report runs
beside the probe, not in it, on a connection of the traffic's pool (the readiness connection, one
per pooler entry, stays the probe's), bounded to REPORT_SECONDS in all and to 250 ms on a lock,
without waiting for a synchronous standby: it never delays or decides readiness. A failed report
is logged and counted (``jotc_schema_reader_reports_failed_total``): the API's database role needs
INSERT and UPDATE on the table, as on jump_requests.

The structs below are what /readyz encodes, so the OpenAPI document (which declares them) describes
the bytes that are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jotc_api.schema_compat import schema_verdict
from jotc_api.tables import SCHEMA_REVISION


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One dependency's state: ``ok``, ``failing``, ``unknown``, ``degraded``, ``not configured``
    or ``draining``; the schema's check names the revision this build serves and, when the database
    is at another compatible one, that one."""

    status: str
    detail: str | None = None
    revision: str | None = None
    database_revision: str | None = None


class Readiness(msgspec.Struct):
    """GET /readyz: ``ready``, ``not ready`` or ``draining``, and each check (database, schema, redis;
    server while draining)."""

    status: str
    checks: dict[str, Check]


Checks = dict[str, Check]
READY = {"ok", "not configured", "degraded"}  # a check in one of these states does not stop traffic
# What this pod's latest /readyz said. Prometheus scrapes unready pods too, so alerts can see that
# no pod is ready without kube-state-metrics (the chart's JotcApiUnavailable): the pod's value is
# its workers' latest answer, whichever worker the probe reached.
ANSWERED_READY = Gauge(
    "jotc_ready",
    "1 while this pod's latest /readyz answer was 200, 0 while it was 503 (not ready, or draining)",
    multiprocess_mode="mostrecent",
)

log = structlog.get_logger("jotc.readiness")
# Inside the chart's readiness probe timeout (3 s) with room for Redis's ping (0.5 s).
READY_CHECK_TIMEOUT = 1.0
# How often a worker reports the revision it serves; jotc-migrate counts a report as live for
# three times as long (READERS_TTL_SECONDS in services/db-migrations/src/jotc_migrations/serving.py).
READER_REPORT_SECONDS = 30.0
REPORT_SECONDS = 1.0
READERS_PRESENT = text("SELECT to_regclass('jotc_schema_readers') IS NOT NULL")
REPORT_BOUNDS = (
    text("SET LOCAL statement_timeout = 250"),
    text("SET LOCAL lock_timeout = 250"),
    text("SET LOCAL synchronous_commit = off"),  # advice, re-sent every 30 s: no standby wait
)
REPORT_FAILURES = Counter(
    "jotc_schema_reader_reports_failed", "Reports of the revision served to jotc_schema_readers that failed"
)
REPORT_READER = text(
    """
    INSERT INTO jotc_schema_readers (revision, seen_at) VALUES (:revision, now())
    ON CONFLICT (revision) DO UPDATE SET seen_at = EXCLUDED.seen_at
    """
)
DRAINING = Readiness(
    "draining",
    {
        "server": Check(
            status="draining",
            detail="stopping: in-flight requests finish, new ones are still served; send them elsewhere",
        )
    },
)


class DatabaseReadiness:
    """The database's part of /readyz, on a connection of its own (the ``engine`` given here has a
    pool of one, apart from the pool that serves traffic), so a pool busy with traffic or a slow
    database cannot keep the probe waiting: it answers within READY_CHECK_TIMEOUT either way.
    Concurrent callers share the check in flight, so no number of callers can queue on that
    connection. Failures name the dependency and what went wrong, never its address; the log has
    the error."""

    def __init__(
        self, engine: AsyncEngine, report_engine: AsyncEngine, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self.report_engine = report_engine
        self.running: asyncio.Future[Checks] | None = None
        self.clock = clock
        self.next_report = 0.0  # when this worker next reports the revision it serves
        self.reporting: asyncio.Task[None] | None = None

    async def database(self) -> Checks:
        if self.running is None:
            self.running = asyncio.ensure_future(self.check())
            self.running.add_done_callback(self.finished)
        try:
            # The check's own deadline ends inside the connection; its clean-up must not keep the probe.
            return dict(await asyncio.wait_for(asyncio.shield(self.running), READY_CHECK_TIMEOUT + 0.5))
        except TimeoutError:
            return unreachable(f"PostgreSQL did not answer within {READY_CHECK_TIMEOUT:g} s")

    def finished(self, _: object) -> None:
        self.running = None

    async def check(self) -> Checks:
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT):
                async with self.engine.connect() as connection:
                    verdict = await schema_verdict(connection)
            if verdict.serves and self.clock() >= self.next_report and self.reporting is None:
                self.next_report = self.clock() + READER_REPORT_SECONDS
                self.reporting = asyncio.create_task(self.report())
        except TimeoutError:
            reason = f"PostgreSQL did not answer within {READY_CHECK_TIMEOUT:g} s"
        except Exception as exc:
            log.warning("readiness: PostgreSQL unavailable", error=(str(exc).strip().splitlines() or [""])[0])
            reason = f"PostgreSQL is unavailable ({type(exc).__name__}; the log has the error)"
        else:
            if not verdict.serves:
                schema = Check(status="failing", detail=verdict.detail)
            elif verdict.database_revision == SCHEMA_REVISION:
                schema = Check(status="ok", revision=SCHEMA_REVISION)
            else:
                schema = Check(
                    status="ok",
                    revision=SCHEMA_REVISION,
                    database_revision=str(verdict.database_revision),
                    detail=verdict.detail,
                )
            return {"database": Check(status="ok"), "schema": schema}
        return unreachable(reason)

    async def report(self) -> None:
        """Record that a worker of this build serves the database now (see the module's docstring)."""
        try:
            async with asyncio.timeout(REPORT_SECONDS):
                async with self.report_engine.connect() as connection:
                    if (await connection.execute(READERS_PRESENT)).scalar_one():
                        for bound in REPORT_BOUNDS:
                            await connection.execute(bound)
                        await connection.execute(REPORT_READER, {"revision": SCHEMA_REVISION})
                        await connection.commit()
        except Exception as exc:  # advice to jotc-migrate: readiness stands without it
            REPORT_FAILURES.inc()
            log.warning(
                "readiness: could not report the revision served to jotc_schema_readers",
                error=(str(exc).strip().splitlines() or [type(exc).__name__])[0],
            )
        finally:
            self.reporting = None

    async def close(self) -> None:
        """Wait for a report in flight (REPORT_SECONDS at most) before the engines go."""
        if self.reporting is not None:
            with contextlib.suppress(Exception):
                await self.reporting


def unreachable(reason: str) -> Checks:
    return {
        "database": Check(status="failing", detail=reason),
        "schema": Check(status="unknown", detail="database unreachable"),
    }
