"""OpenTelemetry traces in process, checked with the SDK's in-memory exporter: a served request is one
trace continuing the caller's traceparent, with its child spans, whatever answers it (the rate
limiter's 429 and the pipeline's 411 too), attributed as Litestar's integration attributes the other
routes' spans; the recorder's batch and the rate limiter's sync are spans of their own linked to the
requests they carried; Litestar's routes (reads, admin, erasure) are traced through Litestar's
integration; retention's chunks; the log lines carry the span's ids and whether it was sampled.
Through the real server and the OTLP/HTTP exporter: tests/system/test_tracing_export.py."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import psycopg
import pytest
import structlog
from jotc_provision import wait_until
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import ADMIN_TOKEN, TEST_SETTINGS, fake_client, fresh_database, in_process, mid_window, plant, redis_url

from jotc_api import served, tracing
from jotc_api.logs import AccessLog, configure_logging
from jotc_api.ratelimit import MAX_SYNC_LINKS, RateLimiter
from jotc_api.redis_link import RedisLink
from jotc_api.retention import apply_retention
from jotc_api.settings import RateLimit

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
UNSAMPLED = {"traceparent": f"00-{'5' * 32}-{PARENT_ID}-00"}
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# The stable HTTP conventions' attributes of a server span (the integration records them under
# OTEL_SEMCONV_STABILITY_OPT_IN=http; the served routes' span always).
STABLE = (
    "http.request.method",
    "http.route",
    "url.path",
    "url.scheme",
    "http.response.status_code",
    "client.address",
    "client.port",
    "user_agent.original",
    "network.protocol.version",
    "server.address",
    "server.port",
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("jotc-api", {}, processor=SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return tracing.ids(span.context)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    return {
        span.name: span
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    }


def test_a_served_post_is_one_trace_continuing_the_callers_traceparent(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    headers = {**TRACEPARENT, "idempotency-key": f"trace-{uuid.uuid4()}"}
    with in_process(database_url) as http:
        response = http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "traced"}, headers=headers)
    assert response.status_code == 201, response.text
    (server,) = named(spans, "POST /jumps")
    assert server.kind == SpanKind.SERVER
    assert hex_ids(server)[0] == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 201
    inner = children(spans, server)
    assert set(inner) == {"redis idempotency claim", "parse", "solve", "wait for commit", "redis idempotency keep"}
    # The batch: a trace of its own, linked to the request's wait for it.
    (batch,) = named(spans, "recorder batch commit")
    assert hex_ids(batch)[0] != TRACE_ID
    assert batch.parent is None
    assert [tracing.ids(link.context) for link in batch.links] == [hex_ids(inner["wait for commit"])]
    assert batch.attributes is not None
    assert batch.attributes["jotc.batch.rows"] == 1


def test_a_refusal_is_an_answer_and_the_jotc_route_is_traced_alike(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    with in_process(database_url) as http:
        assert http.post("/jotc", json={"clouds": [0, 1, 1, 0]}, headers=TRACEPARENT).status_code == 422
        assert http.post("/jotc", json={"clouds": [0, 0, 0]}).status_code == 200
    refused, answered = named(spans, "POST /jotc")
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 422
    assert refused.status.status_code == StatusCode.UNSET
    assert set(children(spans, refused)) == {"parse", "solve"}
    assert hex_ids(answered)[0] != TRACE_ID
    assert answered.parent is None
    assert set(children(spans, answered)) == {"parse", "solve", "wait for commit"}
    assert not named(spans, "redis idempotency claim")


def test_a_server_error_marks_the_server_span(database_url: str, spans: InMemorySpanExporter) -> None:
    with fresh_database() as url, in_process(url) as http:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("ALTER TABLE jump_requests RENAME TO jump_requests_away")
        assert http.post("/jumps", json={"clouds": [0, 0]}).status_code == 503
    (server,) = named(spans, "POST /jumps")
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None
    assert (server.attributes["http.response.status_code"], server.attributes["error.type"]) == (503, "503")
    (batch,) = named(spans, "recorder batch commit")
    assert batch.status.status_code == StatusCode.ERROR


async def test_an_answer_cut_after_it_started_marks_the_server_span(spans: InMemorySpanExporter) -> None:
    """A failure past the answer's start (which the pipeline cannot turn into a 500 any more) is
    ERROR on the served route's span, beside the status the client was sent."""

    async def cut_short(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        raise ConnectionResetError("the client went away mid-answer")

    async def unused(*_: Any) -> Any:
        raise AssertionError("not called")

    route = served.ServedRoute("/jumps", unused, unused, text=False)
    app = served.server_spans(cut_short, {"/jumps": route})
    scope = {"type": "http", "method": "POST", "path": "/jumps", "headers": [], "scheme": "http", "query_string": b""}

    async def send(_: Any) -> None:
        return None

    with pytest.raises(ConnectionResetError):
        await app(scope, unused, send)
    (server,) = named(spans, "POST /jumps")
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 201


def test_the_served_span_carries_the_attributes_the_integration_gives_the_other_routes(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    client = fake_client()
    agent = {"user-agent": "on-call/1.0"}
    with in_process(database_url, peer=client) as http:
        created = http.post("/jumps", json={"clouds": [0, 0, 0, 1, 0]}, headers=agent)
        assert http.get(created.headers["location"], headers=agent).status_code == 200
    (served,) = named(spans, "POST /jumps")
    (read,) = named(spans, "GET /jumps/{request_id}")
    assert served.attributes is not None
    assert read.attributes is not None
    assert {name: served.attributes.get(name) for name in STABLE} == {
        "http.request.method": "POST",
        "http.route": "/jumps",
        "url.path": "/jumps",
        "url.scheme": "http",
        "http.response.status_code": 201,
        "client.address": client,
        "client.port": 50000,
        "user_agent.original": "on-call/1.0",
        "network.protocol.version": "1.1",
        "server.address": "testserver.local",
        "server.port": 80,
    }
    # Every attribute of the integration's span, by the same name and (but for the request's own)
    # with the same value: one query finds both routes' spans.
    own = {"http.method", "http.status_code", "http.route", "http.target", *tracing.QUERY_ATTRIBUTES, "url.path"}
    assert set(read.attributes) <= set(served.attributes) | set(tracing.QUERY_ATTRIBUTES)
    assert {k: v for k, v in read.attributes.items() if k not in own} == {
        k: v for k, v in served.attributes.items() if k in read.attributes and k not in own
    }
    assert (served.attributes["http.method"], served.attributes["http.status_code"]) == ("POST", 201)


def test_the_text_forms_query_which_names_the_user_stays_out_of_the_span(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    with in_process(database_url) as http:
        answered = http.post(
            "/jumps?user=query-secret&max_jump=2",
            content=b"3\n0 0 0\n",
            headers={"content-type": "text/plain"},
        )
    assert answered.status_code == 201, answered.text
    (served,) = named(spans, "POST /jumps")
    assert "query-secret" not in json.dumps(dict(served.attributes or {}))


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"json": {"clouds": [0, 2, 0]}}, 422),
        ({"content": b"[" * 70_000, "headers": {"content-type": "application/json"}}, 413),
        ({"content": b'{"clouds": [0, 0]}', "headers": {"transfer-encoding": "chunked"}}, 411),
    ],
)
def test_every_answer_of_a_served_route_is_its_server_span(
    database_url: str, spans: InMemorySpanExporter, request_kwargs: dict[str, Any], status: int
) -> None:
    with in_process(database_url, **TEST_SETTINGS) as http:
        answered = http.post("/jotc", headers=TRACEPARENT | request_kwargs.pop("headers", {}), **request_kwargs)
    assert answered.status_code == status, answered.text
    (server,) = named(spans, "POST /jotc")
    assert hex_ids(server)[0] == TRACE_ID
    assert server.attributes is not None
    assert (server.attributes["http.response.status_code"], server.attributes["http.route"]) == (status, "/jotc")
    assert server.status.status_code == StatusCode.UNSET, "a refusal is an answer"


def test_a_rate_limited_request_is_its_server_span(database_url: str, spans: InMemorySpanExporter) -> None:
    with in_process(database_url, peer=fake_client(), clock=mid_window(), JOTC_RATE_LIMIT="1/hour") as http:
        assert http.post("/jumps", json={"clouds": [0, 0]}).status_code == 201
        refused = http.post("/jumps", json={"clouds": [0, 0]}, headers=TRACEPARENT)
    assert refused.status_code == 429
    admitted, limited = named(spans, "POST /jumps")
    assert hex_ids(limited)[0] == TRACE_ID
    assert limited.kind == SpanKind.SERVER
    assert limited.attributes is not None
    assert limited.attributes["http.response.status_code"] == 429
    assert limited.attributes["http.route"] == "/jumps"
    assert not children(spans, limited), "refused before any work"
    assert set(children(spans, admitted)) == {"parse", "solve", "wait for commit"}


def test_reads_and_litestar_routed_posts_are_traced_by_the_integration(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    with in_process(database_url) as http:
        created = http.post("/jumps", json={"clouds": [0, 0, 0, 1, 0]})
        assert http.get(created.headers["location"], headers=TRACEPARENT).status_code == 200
    (read,) = named(spans, "GET /jumps/{request_id}")
    assert read.kind == SpanKind.SERVER
    assert hex_ids(read)[0] == TRACE_ID
    assert read.parent is not None
    assert format(read.parent.span_id, "016x") == PARENT_ID
    assert set(children(spans, read)) == {"read record", "solve"}


def test_without_the_fast_path_litestar_makes_the_server_span(database_url: str, spans: InMemorySpanExporter) -> None:
    from litestar.testing import TestClient
    from support import POOLER_SETTINGS, redis_url

    from jotc_api.app import create_app
    from jotc_api.settings import load_settings

    settings = load_settings({"DATABASE_URL": database_url, "REDIS_URL": redis_url(), **POOLER_SETTINGS})
    with TestClient(app=create_app(settings, configure_logs=False, fast_path=False)) as http:
        assert http.post("/jumps", json={"clouds": [0, 0]}, headers=TRACEPARENT).status_code == 201
    (server,) = named(spans, "POST /jumps")
    assert hex_ids(server)[0] == TRACE_ID
    assert set(children(spans, server)) == {"parse", "solve", "wait for commit"}


def test_admin_routes_and_the_erasure_chunks_are_traced(database_url: str, spans: InMemorySpanExporter) -> None:
    user = f"erased-{uuid.uuid4().hex[:8]}"
    plant(database_url, user, 30)
    with in_process(database_url, **TEST_SETTINGS, JOTC_ERASURE_CHUNK_ROWS="10") as http:
        assert http.get("/admin/stats", headers=AUTH).status_code == 200
        assert http.delete(f"/admin/users/{user}/requests", headers={**AUTH, **TRACEPARENT}).status_code == 200
    assert named(spans, "GET /admin/stats")
    (erase,) = named(spans, "DELETE /admin/users/{user}/requests")
    assert hex_ids(erase)[0] == TRACE_ID
    chunks = named(spans, "erasure chunk")
    assert len(chunks) >= 3
    assert all(chunk.parent is not None and chunk.parent.span_id == erase.context.span_id for chunk in chunks)  # type: ignore[union-attr]
    assert not any(user in json.dumps(dict(span.attributes or {})) for span in spans.get_finished_spans())


def test_probes_and_scrapes_make_no_trace(database_url: str, spans: InMemorySpanExporter) -> None:
    with in_process(database_url, **TEST_SETTINGS) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(path, headers=TRACEPARENT).status_code == 200, path
        assert http.get("/admin/stats", headers=AUTH).status_code == 200  # the integration is on
    names = [span.name for span in spans.get_finished_spans()]
    assert "GET /admin/stats" in names
    assert not [name for name in names if any(probe in name for probe in ("healthz", "readyz", "metrics"))], names


def test_a_refused_body_is_not_quoted_in_any_span(database_url: str, spans: InMemorySpanExporter) -> None:
    secret = "top-secret-user@example.com"
    with in_process(database_url, **TEST_SETTINGS) as http:
        refused = http.post("/jumps", json={"clouds": [0, 7, 0], "user": secret}, headers=TRACEPARENT)
    assert refused.status_code == 422
    exported = json.dumps([span.to_json() for span in spans.get_finished_spans()])
    assert "exception" not in exported, "a refusal is an answer, not an exception event"
    assert secret not in exported


def test_the_rate_limits_redis_sync_is_a_span_of_its_own_linked_to_the_sampled_requests_it_carried(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    with in_process(database_url, peer=fake_client(), JOTC_RATE_LIMIT="100/minute") as http:
        assert http.post("/jumps", json={"clouds": [0, 0]}, headers=TRACEPARENT).status_code == 201
        assert http.post("/jotc", json={"clouds": [0, 0]}, headers=UNSAMPLED).status_code == 200
        wait_until(lambda: bool(named(spans, "redis rate-limit sync")), timeout=10, what="a rate-limit sync span")
    (server,) = named(spans, "POST /jumps")
    linked = [tracing.ids(link.context) for sync in named(spans, "redis rate-limit sync") for link in sync.links]
    assert linked == [hex_ids(server)], "the sampled request, not the unsampled one"
    (sync,) = [sync for sync in named(spans, "redis rate-limit sync") if sync.links]
    assert sync.parent is None
    assert sync.attributes is not None
    assert sync.attributes["jotc.rate_limit.sampled_requests"] == 1


async def test_a_sync_links_at_most_max_sync_links_requests_and_counts_them_all(spans: InMemorySpanExporter) -> None:
    link = RedisLink(redis_url())
    limiter = RateLimiter(RateLimit(1000, 3600), link, (), clock=mid_window())
    limiter.sync_scheduled = True  # no background sync: the test runs it
    assert tracing.tracer is not None
    client = fake_client()
    try:
        for _ in range(MAX_SYNC_LINKS + 72):
            with tracing.tracer.start_as_current_span("POST /jumps"):
                assert limiter.admit(client)[0]
        await limiter.sync()
    finally:
        await link.close()
    (sync,) = named(spans, "redis rate-limit sync")
    assert len(sync.links) == MAX_SYNC_LINKS
    assert sync.attributes is not None
    assert sync.attributes["jotc.rate_limit.sampled_requests"] == MAX_SYNC_LINKS + 72
    assert sync.status.status_code == StatusCode.UNSET


async def test_a_failed_sync_is_a_failed_span_linked_to_the_requests_it_could_not_carry(
    spans: InMemorySpanExporter,
) -> None:
    link = RedisLink("redis://127.0.0.1:1")  # nothing listens there
    limiter = RateLimiter(RateLimit(10, 3600), link, (), clock=mid_window())
    limiter.sync_scheduled = True
    assert tracing.tracer is not None
    try:
        with tracing.tracer.start_as_current_span("POST /jotc") as request:
            assert limiter.admit(fake_client())[0]
        await limiter.sync()
    finally:
        await link.close()
    (sync,) = named(spans, "redis rate-limit sync")
    assert sync.status.status_code == StatusCode.ERROR
    assert [link.context.span_id for link in sync.links] == [request.get_span_context().span_id]


def test_retention_chunks_are_spans(spans: InMemorySpanExporter) -> None:
    with fresh_database() as url:
        plant(url, "old@example.com", 25, age="40 days")
        with psycopg.connect(url) as connection, tracing.span("retention run") as run:
            assert apply_retention(connection, 30, 10).deleted == 25
    chunks = named(spans, "retention chunk")
    assert len(chunks) == 3
    assert all(chunk.parent is not None and chunk.parent.span_id == run.get_span_context().span_id for chunk in chunks)


def test_log_lines_written_in_a_span_carry_its_ids_and_whether_it_was_sampled(spans: InMemorySpanExporter) -> None:
    assert tracing.tracer is not None
    out = io.StringIO()
    with redirect_stdout(out):
        configure_logging("INFO", "json")
        structlog.get_logger("jotc.test").info("outside")
        with tracing.span("work") as span:
            structlog.get_logger("jotc.test").info("inside")
        unsampled = tracing.incoming([(b"traceparent", UNSAMPLED["traceparent"].encode())])
        with tracing.tracer.start_as_current_span("POST /jumps", unsampled) as dropped:
            structlog.get_logger("jotc.test").info("not exported")
    outside, inside, not_exported = (json.loads(line) for line in out.getvalue().splitlines())
    assert "trace_id" not in outside
    assert "trace_sampled" not in outside
    assert (inside["trace_id"], inside["span_id"], inside["trace_sampled"]) == (
        *tracing.ids(span.get_span_context()),
        True,
    )
    assert (not_exported["trace_id"], not_exported["span_id"], not_exported["trace_sampled"]) == (
        *tracing.ids(dropped.get_span_context()),
        False,
    )
    assert not spans.get_finished_spans()[1:], "the unsampled span was not exported"


def test_the_access_line_carries_the_server_spans_ids_and_sampled_flag(capsys: pytest.CaptureFixture[str]) -> None:
    lines = AccessLog("json")
    lines.pending.append(b"")  # no flush scheduled: this test has no event loop
    lines.add("POST", "/jumps", 201, 0.001, "rid", (TRACE_ID, PARENT_ID, False))
    line = json.loads(lines.pending[-1])
    assert (line["trace_id"], line["span_id"], line["trace_sampled"], line["request_id"]) == (
        TRACE_ID,
        PARENT_ID,
        False,
        "rid",
    )
