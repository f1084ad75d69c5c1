"""create_app(): the application that runs, its layers, its lifespan (pools, recorder) and error handling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import PluginProtocol
from litestar.types import ASGIApp, BeforeMessageSendHookHandler, Message, Scope
from opentelemetry import trace
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jotc_api import __version__, served, tracing
from jotc_api.clients import Clients
from jotc_api.drain import DrainFlag
from jotc_api.erasure import Eraser, Pace
from jotc_api.idempotency import IdempotencyStore
from jotc_api.logs import configure_logging
from jotc_api.memory import DEFAULT_REQUEST_MEMORY, MemoryBudget, small_allowance
from jotc_api.metrics import metrics_route
from jotc_api.openapi import SCHEMA_PATH, SelfHostedSwaggerUI
from jotc_api.pipeline import cors_config, response_pipeline
from jotc_api.problems import (
    PROBLEM_JSON,
    FieldError,
    Problem,
    body_too_large,
    internal_error,
    validation_problem,
)
from jotc_api.ratelimit import RateLimiter, rate_limit_middleware
from jotc_api.readiness import READY_CHECK_TIMEOUT, DatabaseReadiness
from jotc_api.recorder import Recorder
from jotc_api.redis_link import RedisLink
from jotc_api.routes.admin import admin_router, forget_erased
from jotc_api.routes.jumps import get_jump, post_jotc, post_jumps
from jotc_api.routes.operations import healthz, index, problem_kind, readyz
from jotc_api.services import STATE_KEY, Services
from jotc_api.settings import Settings
from jotc_api.transport import Uploads

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
REDACTED = "(see http.route)"
# The attributes that carry a request's path or query, in the old and the stable HTTP conventions.
URL_ATTRIBUTES = ("http.target", "http.url", "url.path", "url.query", "url.full")
UNTRACED_PATHS = ["^/healthz$", "^/readyz$", "^/metrics$"]
FLUSH_MILLISECONDS = 5000


def problem_response(problem: Problem) -> Response[bytes]:
    status, headers, body = problem.render()
    return Response(
        body, status_code=status, media_type=PROBLEM_JSON, headers={k.decode(): v.decode() for k, v in headers[2:]}
    )


def on_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    return problem_response(exc)


def on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        log.error("server error", detail=exc.detail, exc_info=exc)
        return problem_response(internal_error())
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        # A declared parameter failed Litestar's validation: the contract says 422, naming it.
        return problem_response(validation_problem([parameter_error(item) for item in exc.extra]))
    if status == 413:
        return problem_response(body_too_large())
    kind = STATUS_KINDS.get(status, "bad-request")
    detail = "nothing here; see /schema for the API's routes" if isinstance(exc, NotFoundException) else str(exc.detail)
    return problem_response(Problem(status, kind, detail, headers=dict(exc.headers or {})))


def parameter_error(item: Any) -> FieldError:
    if isinstance(item, dict):
        message = str(item.get("message") or "is not valid").replace("`", "")
        return FieldError(str(item.get("key") or "request"), message[:1].lower() + message[1:])
    return FieldError("request", str(item))


def on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc)
    return problem_response(internal_error())


def connect_args(settings: Settings, application_name: str, connect_timeout: int) -> dict[str, Any]:
    """psycopg's connection arguments. Behind a transaction-mode pooler (JOTC_DB_POOLER=transaction)
    consecutive transactions of one connection may reach different server connections, so psycopg
    never prepares a statement on the server (its default prepares one after five executions):
    PgBouncer 1.18 would hand the prepared name to another client. Nothing else of the API keeps
    session state: every statement or transaction stands alone."""
    arguments: dict[str, Any] = {"connect_timeout": connect_timeout, "application_name": application_name}
    if settings.db_pooler == "transaction":
        arguments["prepare_threshold"] = None
    return arguments


def make_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_pre_ping=True,
        connect_args=connect_args(settings, "jotc-api", 3),
    )


def make_readiness_engine(settings: Settings) -> AsyncEngine:
    """/readyz's own connection (one per worker, counted in the connection budget), to
    JOTC_READINESS_DATABASE_URL when set: behind a transaction-mode pooler, an entry with a pool of
    its own, since in the traffic's pool the check would wait behind the traffic."""
    return create_async_engine(
        settings.readiness_database_url or settings.database_url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=READY_CHECK_TIMEOUT,
        pool_pre_ping=True,  # a connection PostgreSQL dropped (a restart, a failover) is replaced, not reported
        connect_args=connect_args(settings, "jotc-api-readiness", 1),
    )


async def warm_up(engine: AsyncEngine, pool_size: int) -> None:
    """Open every pooled connection now, so the first request pays no connection set-up. Each
    query's transaction ends at once: behind a transaction-mode pooler an open one holds a server
    connection, and workers starting together, each holding a few while it waits for the rest of
    its pool, could take every server connection and wait on one another for ever."""
    connections = [await engine.connect() for _ in range(pool_size)]
    try:
        for connection in connections:
            await connection.execute(text("SELECT 1"))
            await connection.rollback()
    finally:
        for connection in connections:
            await connection.close()


def create_app(
    settings: Settings,
    *,
    redis: RedisLink | None = None,
    configure_logs: bool = True,
    fast_path: bool = True,
    drain: DrainFlag | None = None,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """The application that runs, outside in: the response pipeline (request id, CORS, headers,
    metrics, access log, last-resort 500), rate limiting (when JOTC_RATE_LIMIT is set), the fast
    path for the served routes, then Litestar; while tracing is on, the served routes' server spans
    stand in front of it all. Every answer, 404s and crashes included, is counted
    and leaves through the pipeline. ``fast_path=False`` leaves the served routes to Litestar;
    ``clock`` is the wall clock of rate limiting's windows (tests give their own)."""
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)
    link = redis if redis is not None else RedisLink.from_settings(settings)
    drain = drain if drain is not None else DrainFlag.attach()
    # One client is one client for every bound: the rate limit and the upload and memory shares
    # key their counts with the same Clients (and its one table of the load test's named clients).
    clients = Clients(settings.trusted_proxies, settings.loadtest_token)
    litestar = create_litestar(settings, link, drain, clients)
    app: ASGIApp = served.fast_path(litestar, litestar) if fast_path else litestar
    if settings.rate_limit is not None:
        limiter = RateLimiter(settings.rate_limit, link, settings.trusted_proxies, clients=clients, clock=clock)
        app = rate_limit_middleware(limiter, app)
    pipeline = response_pipeline(
        app, cors=cors_config(settings.cors_origins), access=settings.access_log, fmt=settings.log_format, drain=drain
    )
    if tracing.tracer is not None and fast_path:
        # The fast path's requests never reach Litestar's integration: their server span stands in
        # front of the pipeline, so that it holds every answer (the rate limiter's 429 included).
        return served.server_spans(pipeline, served.served_routes(litestar))
    return pipeline


def create_litestar(settings: Settings, link: RedisLink, drain: DrainFlag, clients: Clients) -> Litestar:
    small = small_allowance(settings.backpressure, settings.max_clouds)  # not charged one by one
    memory = MemoryBudget(
        (settings.request_memory or DEFAULT_REQUEST_MEMORY) - small, clients, settings.upload_share_percent / 100
    )
    uploads = Uploads(
        slots=settings.upload_slots,
        per_client=settings.uploads_per_client,
        max_body=settings.max_body_bytes,
        max_clouds=settings.max_clouds,
        seconds=settings.body_read_timeout,
        min_rate=settings.body_min_rate,
        memory=memory,
        clients=clients,
    )
    services = Services(
        settings=settings, redis=link, drain=drain, memory=memory, uploads=uploads, idempotency=IdempotencyStore(link)
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services.engine = engine = make_engine(settings)
        try:
            await warm_up(engine, settings.db_pool_size)
        except Exception as exc:
            log.warning("database not reachable at start-up; /readyz will say so", error=str(exc))
        services.recorder = recorder = Recorder(
            engine,
            max_batch=settings.recorder_max_batch,
            writers=settings.recorder_writers,
            max_pending=settings.recorder_max_batch * settings.db_pool_size * 4,
            write_timeout=DB_WRITE_TIMEOUT_SECONDS,
        )
        readiness_engine = make_readiness_engine(settings)
        with contextlib.suppress(Exception):  # unreachable: the traffic pool's warm-up has said so
            await warm_up(readiness_engine, 1)  # the first probe pays no connection set-up
        services.readiness = readiness = DatabaseReadiness(readiness_engine, engine)
        # Erasures that outlive their request, or a restart, are finished here (erasure.py).
        pace = Pace(settings.erasure_chunk_rows, settings.erasure_busy_percent / 100)
        services.eraser = Eraser(engine, partial(forget_erased, services), pace=pace)
        log.info("ready to serve", version=__version__)
        try:
            yield
        finally:
            await services.eraser.close()
            await readiness.close()
            await recorder.close(timeout=settings.shutdown_timeout)
            await engine.dispose()
            await readiness_engine.dispose()
            await link.close()
            log.info("stopped")
            if tracing.provider is not None:
                # The worker's last spans, before it exits; off the event loop, and not for longer
                # than a collector that is down deserves out of the pod's grace period.
                await asyncio.to_thread(tracing.provider.force_flush, FLUSH_MILLISECONDS)

    plugins, before_send = litestar_tracing()

    return Litestar(
        route_handlers=[
            post_jumps,
            get_jump,
            post_jotc,
            index,
            healthz,
            readyz,
            problem_kind,
            metrics_route,
            admin_router,
        ],
        state=State({STATE_KEY: services}),
        lifespan=[lifespan],
        exception_handlers={
            Problem: on_problem,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
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
        plugins=plugins,
        before_send=before_send,
        debug=False,
    )


def litestar_tracing() -> tuple[list[PluginProtocol], list[BeforeMessageSendHookHandler]]:
    """Litestar's OpenTelemetry integration for the routes Litestar answers, while tracing is on
    (nothing at all otherwise): a server span per request continuing the caller's traceparent,
    named by its route template once the router has matched it (not by its path, which holds ids)."""
    if tracing.tracer is None:
        return [], []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    def server_span(scope: Any) -> tuple[str, dict[str, Any]]:
        return str(scope.get("method", "HTTP")), {}

    def started(span: trace.Span, scope: dict[str, Any]) -> None:
        # Paths and queries name users (/admin/users/{user}/requests, ?user=): traces, kept by other
        # systems, get the route template (http.route) instead; an erased user stays out of them.
        # Both conventions' names: OTEL_SEMCONV_STABILITY_OPT_IN=http (or http/dup) records url.*.
        span.set_attributes({name: REDACTED for name in URL_ATTRIBUTES})
        tracing.note_server_span(span)

    def named_by_route(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            span = trace.get_current_span()
            template = scope.get("path_template")
            if template and span.is_recording():
                span.update_name(f"{scope.get('method', 'HTTP')} {template}")
                span.set_attribute("http.route", str(template))

    config = OpenTelemetryConfig(
        tracer=tracing.tracer,
        server_request_hook_handler=started,
        scope_span_details_extractor=server_span,
        exclude_spans=["receive", "send"],
        # Probes and scrapes, every few seconds from every prober: traces of nothing but noise.
        exclude=UNTRACED_PATHS,
    )
    return [OpenTelemetryPlugin(config)], [named_by_route]
