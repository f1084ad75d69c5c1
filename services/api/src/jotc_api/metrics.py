"""Prometheus metrics, correct across Granian's worker processes.

The server points PROMETHEUS_MULTIPROC_DIR at a directory every worker writes
(prometheus_client's multiprocess mode); /metrics sums them. Request metrics
are kept by a small ASGI layer around the whole app, labelled by route
template (``/jumps/{request_id}``), not by raw path, so cardinality stays fixed.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Counter(
    "jotc_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_SECONDS = Histogram(
    "jotc_http_request_duration_seconds",
    "Time from request to the end of the response, by method and route template",
    ["method", "route"],
    buckets=SECONDS_BUCKETS,
)
UNMATCHED = "unmatched"
NOT_MEASURED = frozenset({"/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


FLUSH_SECONDS = 1.0


class Durations:
    """One route's durations since the last hand-over: observations per bucket of SECONDS_BUCKETS
    (the last one is +Inf) and their sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(SECONDS_BUCKETS) + 1)
        self.total = 0.0


class RequestTally:
    """Per-worker request counts and durations in plain dicts, handed to prometheus_client once a
    second. In multiprocess mode every prometheus_client update is a locked write to a memory-mapped
    file; three of those per request cost more than the rest of the bookkeeping. Durations are
    tallied into the histogram's buckets as they come, so a hand-over writes each bucket once,
    however many requests it holds (replaying every observation stalled the worker for
    milliseconds each second under load). /metrics lags by at most FLUSH_SECONDS, far below any
    scrape interval."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], Durations] = {}
        self.flush_scheduled = False

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        durations = self.durations.get((method, route))
        if durations is None:
            durations = self.durations[(method, route)] = Durations()
        durations.buckets[bisect_left(SECONDS_BUCKETS, seconds)] += 1  # the first bucket whose bound >= seconds
        durations.total += seconds
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        counts, durations = self.counts, self.durations
        self.counts, self.durations, self.flush_scheduled = {}, {}, False
        for (method, route, status), count in counts.items():
            HTTP_REQUESTS.labels(method, route, str(status)).inc(count)
        for (method, route), tallied in durations.items():
            observe_tallied(HTTP_SECONDS.labels(method, route), tallied.buckets, tallied.total)


def observe_tallied(histogram: Histogram, buckets: list[int], total: float) -> None:
    """What observe() once per observation would have recorded, one write per bucket.
    prometheus_client has no public call for many observations at once; observe() itself adds
    to ``_sum`` and to the first ``_buckets`` entry whose bound holds the value (buckets are kept
    uncumulated), and so does this. tests/unit/test_metrics_tally.py checks the exposition is
    the same as observe()'s, so a change inside prometheus_client fails there, not in production."""
    histogram._sum.inc(total)
    for index, count in enumerate(buckets):
        if count:
            histogram._buckets[index].inc(count)


# Litestar adds the charset itself: give it the type without one, or it would be said twice.
METRICS_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


@get(
    "/metrics",
    media_type=METRICS_TYPE,
    summary="Prometheus metrics, summed over every worker",
    tags=["operations"],
    sync_to_thread=False,
)
def metrics_route() -> Response[bytes]:
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=METRICS_TYPE)
