"""GET /, /healthz, /readyz, /problems/{kind}: what operators and their probes ask."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from jotc_api.openapi import NoValidationOperation, answer_spec, problem
from jotc_api.problems import KINDS, Problem
from jotc_api.readiness import ANSWERED_READY, DRAINING, READY, Check, Readiness
from jotc_api.services import services_of

JSON = "application/json"


@get("/", summary="Service name, version and where the docs are", tags=["operations"])
async def index(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"service": "jotc-api", "version": services_of(request.app).settings.version, "docs": "/schema"}


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
    services = services_of(request.app)
    if services.drain.draining:
        # No dependency checks: whatever they say, a balancer should now send traffic elsewhere.
        ANSWERED_READY.set(0)
        return Response(msgspec.json.encode(DRAINING), status_code=503, media_type=JSON)
    checks = await services.readiness.database()
    redis_status = await services.redis.ping()
    checks["redis"] = Check(
        status=redis_status,
        detail="Redis unreachable: rate limits per worker, Idempotency-Key refused"
        if redis_status == "degraded"
        else None,
    )
    ready = all(check.status in READY for check in checks.values())
    ANSWERED_READY.set(1 if ready else 0)
    answer = Readiness("ready" if ready else "not ready", checks)
    return Response(msgspec.json.encode(answer), status_code=200 if ready else 503, media_type=JSON)


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
    return Response(f"{KINDS[kind].title}\n\n{KINDS[kind].meaning}\n", media_type="text/plain")
