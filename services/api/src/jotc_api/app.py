"""create_app(): the Litestar application, its lifespan (pools, recorder) and error handling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusController
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jotc_api import __version__
from jotc_api.logs import configure_logging
from jotc_api.openapi import SCHEMA_PATH, SelfHostedSwaggerUI
from jotc_api.problems import PROBLEM_JSON, Problem
from jotc_api.recorder import Recorder
from jotc_api.redis_features import IdempotencyStore, RedisLink
from jotc_api.routes.admin import admin_router
from jotc_api.routes.jumps import get_jump, post_jotc, post_jumps
from jotc_api.routes.operations import healthz, index, problem_kind, readyz
from jotc_api.settings import Settings

log = structlog.get_logger("jotc.app")

STATUS_KINDS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}
DB_WRITE_TIMEOUT_SECONDS = 10.0


def problem_response(problem: Problem) -> Response[bytes]:
    return Response(problem.body(), status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers)


def on_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    return problem_response(exc)


def on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        log.error("server error", detail=exc.detail, exc_info=exc)
    kind = STATUS_KINDS.get(status, "internal" if status >= 500 else "bad-request")
    detail = str(exc.detail)
    if status == 413:
        detail = "the request body is larger than JOTC_MAX_BODY_BYTES allows"
    elif isinstance(exc, NotFoundException):
        detail = "nothing here; see /schema for the API's routes"
    return problem_response(Problem(status, kind, detail, headers=dict(exc.headers or {})))


def on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc)
    return problem_response(Problem(HTTP_500_INTERNAL_SERVER_ERROR, "internal", "unexpected error; see the server log"))


def make_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 3, "application_name": "jotc-api"},
    )


async def warm_up(engine: AsyncEngine, pool_size: int) -> None:
    """Open every pooled connection now, so the first request pays no connection set-up."""
    connections = [await engine.connect() for _ in range(pool_size)]
    try:
        for connection in connections:
            await connection.execute(text("SELECT 1"))
    finally:
        for connection in connections:
            await connection.close()


def create_app(settings: Settings, *, redis: RedisLink | None = None, configure_logs: bool = True) -> Litestar:
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = make_engine(settings)
        try:
            await warm_up(engine, settings.db_pool_size)
        except Exception as exc:
            log.warning("database not reachable at start-up; /readyz will say so", error=str(exc))
        recorder = Recorder(
            engine,
            max_batch=settings.recorder_max_batch,
            writers=settings.recorder_writers,
            max_pending=settings.recorder_max_batch * settings.db_pool_size * 4,
            write_timeout=DB_WRITE_TIMEOUT_SECONDS,
        )
        link = redis if redis is not None else RedisLink(settings.redis_url)
        app.state.update(
            settings=settings,
            engine=engine,
            recorder=recorder,
            redis=link,
            idempotency=IdempotencyStore(link),
        )
        log.info("ready to serve", version=__version__)
        try:
            yield
        finally:
            await recorder.close(timeout=settings.shutdown_timeout)
            await engine.dispose()
            await link.close()
            log.info("stopped")

    cors = (
        CORSConfig(allow_origins=list(settings.cors_origins), expose_headers=["Location", "X-Request-ID"])
        if settings.cors_origins
        else None
    )
    return Litestar(
        route_handlers=[
            post_jumps,
            get_jump,
            post_jotc,
            index,
            healthz,
            readyz,
            problem_kind,
            PrometheusController,
            admin_router,
        ],
        lifespan=[lifespan],
        exception_handlers={
            Problem: on_problem,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
        cors_config=cors,
        openapi_config=OpenAPIConfig(
            title="JOTC API",
            version=__version__,
            description="Jumping on the Clouds, solved and durably recorded.",
            path=SCHEMA_PATH,
            render_plugins=[SelfHostedSwaggerUI()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="JOTC_ADMIN_TOKEN")
                }
            ),
        ),
        logging_config=None,
        debug=False,
    )
