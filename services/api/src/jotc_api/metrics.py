"""Prometheus metrics, correct across Granian's worker processes.

The server points PROMETHEUS_MULTIPROC_DIR at a directory every worker writes
(prometheus_client's multiprocess mode); /metrics sums them. Request metrics
are kept by a small ASGI layer around the whole app, labelled by route
template (``/jumps/{request_id}``), not by raw path, so cardinality stays fixed.
"""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "jotc_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "jotc_http_request_duration_seconds",
    "Time from request to the end of the response, by method and route template",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UNMATCHED = "unmatched"
NOT_MEASURED = frozenset({"/metrics"})


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in NOT_MEASURED:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_capturing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_capturing_status)
        finally:
            route = str(scope.get("path_template") or UNMATCHED)  # set by Litestar's router
            key = (scope["method"], route, status)
            child = children.get(key)
            if child is None:
                child = (
                    HTTP_REQUESTS.labels(scope["method"], route, str(status)),
                    HTTP_SECONDS.labels(scope["method"], route),
                )
                children[key] = child
            child[0].inc()
            child[1].observe(time.perf_counter() - started)

    return middleware
