"""GET /, /healthz, /readyz, /problems/{kind}: what operators and their probes ask."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar import Request, Response, get
from litestar.params import FromPath

from jotc_api.drain import DrainFlag
from jotc_api.openapi import NoValidationOperation, Readiness, answer_spec, problem
from jotc_api.problems import KINDS, Problem
from jotc_api.schema_compat import schema_verdict
from jotc_api.settings import Settings
from jotc_api.tables import SCHEMA_REVISION

log = structlog.get_logger("jotc.readiness")
# Inside the chart's readiness probe timeout (3 s) with room for Redis's ping (0.5 s).
READY_CHECK_TIMEOUT = 1.0
JSON = "application/json"
DRAINING = msgspec.json.encode(
    {
        "status": "draining",
        "checks": {
            "server": {
                "status": "draining",
                "detail": "stopping: in-flight requests finish, new ones are still served; send them elsewhere",
            }
        },
    }
)


class DatabaseReadiness:
    """The database's part of /readyz, on a connection of its own (the ``engine`` given here has a
    pool of one, apart from the pool that serves traffic), so a pool busy with traffic or a slow
    database cannot keep the probe waiting: it answers within READY_CHECK_TIMEOUT either way.
    Concurrent callers share the check in flight, so no number of callers can queue on that
    connection. Failures name the dependency and what went wrong, never its address; the log has
    the error."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.running: asyncio.Future[dict[str, dict[str, str]]] | None = None

    async def database(self) -> dict[str, dict[str, str]]:
        if self.running is None:
            self.running = asyncio.ensure_future(self.check())
            self.running.add_done_callback(self.finished)
        try:
            # The check's own deadline ends inside the connection; its clean-up must not keep the probe.
            return dict(await asyncio.wait_for(asyncio.shield(self.running), READY_CHECK_TIMEOUT + 0.5))
        except TimeoutError:
            return {
                "database": {
                    "status": "failing",
                    "detail": f"PostgreSQL did not answer within {READY_CHECK_TIMEOUT:g} s",
                },
                "schema": {"status": "unknown", "detail": "database unreachable"},
            }

    def finished(self, _: object) -> None:
        self.running = None

    async def check(self) -> dict[str, dict[str, str]]:
        checks: dict[str, dict[str, str]] = {}
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT):
                async with self.engine.connect() as connection:
                    verdict = await schema_verdict(connection)
        except TimeoutError:
            reason = f"PostgreSQL did not answer within {READY_CHECK_TIMEOUT:g} s"
        except Exception as exc:
            log.warning("readiness: PostgreSQL unavailable", error=(str(exc).strip().splitlines() or [""])[0])
            reason = f"PostgreSQL is unavailable ({type(exc).__name__}; the log has the error)"
        else:
            checks["database"] = {"status": "ok"}
            if verdict.serves:
                checks["schema"] = {"status": "ok", "revision": SCHEMA_REVISION}
                if verdict.database_revision != SCHEMA_REVISION:
                    checks["schema"] |= {"database_revision": str(verdict.database_revision), "detail": verdict.detail}
            else:
                checks["schema"] = {"status": "failing", "detail": verdict.detail}
            return checks
        checks["database"] = {"status": "failing", "detail": reason}
        checks["schema"] = {"status": "unknown", "detail": "database unreachable"}
        return checks


@get("/", summary="Service name, version and where the docs are", tags=["operations"])
async def index(request: Request[Any, Any, Any]) -> dict[str, str]:
    settings: Settings = request.app.state.settings
    return {"service": "jotc-api", "version": settings.version, "docs": "/schema"}


@get("/healthz", summary="Liveness: 200 while the process serves", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Readiness: PostgreSQL answers and its schema is this build's, or a newer compatible one",
    tags=["operations"],
    responses={
        200: answer_spec(Readiness, "Ready; redis may be `degraded`"),
        503: answer_spec(
            Readiness,
            "Not ready: database unreachable, or schema older than or incompatible with this build; "
            "or `draining`: the server is stopping and still serves, send new requests elsewhere",
        ),
    },
)
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    drain: DrainFlag = request.app.state.drain
    if drain.draining:
        # No dependency checks: whatever they say, a balancer should now send traffic elsewhere.
        return Response(DRAINING, status_code=503, media_type=JSON)
    checks = await request.app.state.readiness.database()
    redis_status = await request.app.state.redis.ping()
    checks["redis"] = {"status": redis_status}
    if redis_status == "degraded":
        checks["redis"]["detail"] = "Redis unreachable: rate limits per worker, Idempotency-Key refused"
    ready = all(check["status"] in {"ok", "not configured", "degraded"} for check in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return Response(msgspec.json.encode(body), status_code=200 if ready else 503, media_type=JSON)


@get(
    "/problems/{kind:str}",
    summary="What an error type means: the `type` of every problem+json answer links here",
    media_type="text/plain",
    tags=["operations"],
    operation_class=NoValidationOperation,
    responses={404: problem("No such problem type")},
)
async def problem_kind(kind: FromPath[str]) -> Response[str]:
    if kind not in KINDS:
        raise Problem(404, "not-found", f"no problem type {kind[:64]!r}")
    title, explanation = KINDS[kind]
    return Response(f"{title}\n\n{explanation}\n", media_type="text/plain")
