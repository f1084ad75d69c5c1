"""The request metrics' hand-over: what a second of requests leaves in the histogram is exactly
what observing each request would have left, written once per bucket."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from jotc_api import metrics
from jotc_api.metrics import SECONDS_BUCKETS, RequestTally

# On a bound, between bounds, below the first and past the last (the +Inf bucket), twice over.
SECONDS = [0.0001, 0.0005, 0.0007, 0.001, 0.0042, 0.0042, 0.3, 3.0, 10.0, 11.0, 120.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text /metrics would serve, without the creation timestamps."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


async def test_a_hand_over_records_what_observing_each_request_would(monkeypatch: pytest.MonkeyPatch) -> None:
    expected, got = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("seconds", "doc", ["method", "route"], buckets=SECONDS_BUCKETS, registry=expected)
    requests = Counter("requests", "doc", ["method", "route", "status"], registry=expected)
    requests.labels("POST", "/jumps", "201").inc(len(SECONDS))
    for seconds in SECONDS:
        reference.labels("POST", "/jumps").observe(seconds)
    monkeypatch.setattr(
        metrics, "HTTP_SECONDS", Histogram("seconds", "doc", ["method", "route"], buckets=SECONDS_BUCKETS, registry=got)
    )
    monkeypatch.setattr(
        metrics, "HTTP_REQUESTS", Counter("requests", "doc", ["method", "route", "status"], registry=got)
    )
    tally = RequestTally()
    for seconds in SECONDS:
        tally.add("POST", "/jumps", 201, seconds)
    tally.flush()
    assert exposition(got) == exposition(expected)
    assert (tally.counts, tally.durations, tally.flush_scheduled) == ({}, {}, False), "a hand-over empties the tally"
