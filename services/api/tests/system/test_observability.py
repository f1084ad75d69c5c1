"""Metrics across both of Granian's workers, labelled by route template, and the JSON access log of
the real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from jotc_provision import wait_until
from support import ApiServer, start_api


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def settled_metrics(api: ApiServer, settled: Callable[[str], bool]) -> str:
    """/metrics once `settled` holds for it: each worker hands its request counts over once a
    second, so what a test did shows within a few seconds."""

    def scraped() -> str | None:
        text = httpx.get(f"{api.base_url}/metrics").text
        return text if settled(text) else None

    return wait_until(scraped, timeout=15, what="the metrics to show every request", interval=0.1)


@pytest.fixture
def unused_api(database_url: str, tmp_path: Path) -> Iterator[ApiServer]:
    """A server no other test has sent a request: a count handed over late (once a second, later on
    a busy machine) from another test's request would land among this test's."""
    server = start_api(database_url, tmp_path)
    yield server
    server.stop()


def test_metrics_count_every_request_across_both_workers(unused_api: ApiServer) -> None:
    before = httpx.get(f"{unused_api.base_url}/metrics").text
    # New connections each time, so Granian spreads them over its two workers.
    for _ in range(40):
        assert httpx.post(f"{unused_api.base_url}/jumps", json={"clouds": [0, 0]}).status_code == 201
    for _ in range(5):
        httpx.post(f"{unused_api.base_url}/jumps", json={"clouds": [0, 2]})
    after = settled_metrics(
        unused_api,
        lambda text: (
            metric(text, "jotc_http_requests_total", route="/jumps")
            - metric(before, "jotc_http_requests_total", route="/jumps")
            >= 45
        ),
    )
    counted = metric(after, "jotc_http_requests_total", route="/jumps", status="201") - metric(
        before, "jotc_http_requests_total", route="/jumps", status="201"
    )
    assert counted == 40
    rejected = metric(after, "jotc_http_requests_total", route="/jumps", status="422") - metric(
        before, "jotc_http_requests_total", route="/jumps", status="422"
    )
    assert rejected == 5
    assert metric(after, "jotc_http_request_duration_seconds_count", route="/jumps") >= 45
    rows = metric(after, "jotc_recorder_batch_rows_sum") - metric(before, "jotc_recorder_batch_rows_sum")
    assert rows == 40
    assert metric(after, "jotc_recorder_commit_seconds_count") >= 1


def test_metrics_label_by_route_template_not_raw_path(api: ApiServer) -> None:
    for _ in range(3):
        httpx.get(f"{api.base_url}/jumps/00000000-0000-7000-8000-000000000000")
    text = settled_metrics(
        api, lambda text: metric(text, "jotc_http_requests_total", route="/jumps/{request_id}", status="404") >= 3
    )
    assert "00000000-0000-7000" not in text
    assert metric(text, "jotc_http_requests_total", route="/jumps/{request_id}", status="404") >= 3


def test_access_log_lines_are_json_with_the_request_id(api: ApiServer, server_client: httpx.Client) -> None:
    server_client.get("/healthz", headers={"x-request-id": "log-check-42"})

    def logged() -> list[str]:  # access lines are written in batches every 0.2 s
        return [line for line in api.log().splitlines() if "log-check-42" in line]

    lines = wait_until(logged, timeout=10, what="the access line of request log-check-42")
    assert '"request_id":"log-check-42"' in lines[0]
    assert '"status":200' in lines[0]


def test_the_pods_readiness_is_scraped_as_its_workers_latest_answer(api: ApiServer) -> None:
    """jotc_ready across the server's workers (multiprocess mode): their latest /readyz answer."""
    for _ in range(4):  # fresh connections: both workers answer
        assert httpx.get(f"{api.base_url}/readyz").status_code == 200
    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric(text, "jotc_ready") == 1.0, [line for line in text.splitlines() if "jotc_ready" in line]
