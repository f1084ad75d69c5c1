"""A real server with OTEL_EXPORTER_OTLP_ENDPOINT set sends a request's trace, through the SDK's
OTLP/HTTP exporter, to a receiver this test runs: the trace continues the caller's traceparent,
holds the request's child spans, the recorder's batch span links to it, and the server's log lines
for the request carry its trace_id and trace_sampled true; an unsampled request's lines carry its
trace_id with trace_sampled false, and no span of it is sent. The spans themselves:
tests/integration/test_tracing.py."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from jotc_provision import wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support import start_api

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
UNSAMPLED_TRACE_ID = "1bf7651916cd43dd8448eb211c80319d"
PARENT_ID = "b7ad6b7169203331"


class Receiver(ThreadingHTTPServer):
    """OTLP/HTTP's trace endpoint: POST /v1/traces, protobuf; every span received, with its service."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.spans: list[tuple[str, Span]] = []
        self.lock = threading.Lock()

    def received(self) -> list[tuple[str, Span]]:
        with self.lock:
            return list(self.spans)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers["content-type"] != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in export.resource_spans:
                attributes = resource_spans.resource.attributes
                service = next(a.value.string_value for a in attributes if a.key == "service.name")
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((service, span) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_request_s_trace_reaches_an_otlp_receiver_and_its_log_lines_carry_it(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    api = start_api(
        database_url,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}",
        OTEL_SERVICE_NAME="jotc-api-under-test",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.1",  # the caller's sampled flag decides: parent-based
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    request_id = f"traced-{uuid.uuid4().hex[:12]}"
    unsampled_id = f"untraced-{uuid.uuid4().hex[:12]}"
    headers = {
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "x-request-id": request_id,
        "idempotency-key": request_id,
    }
    try:
        with httpx.Client(base_url=api.base_url, timeout=30) as http:
            response = http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "otlp"}, headers=headers)
            assert response.status_code == 201, response.text
            unsampled = {"traceparent": f"00-{UNSAMPLED_TRACE_ID}-{PARENT_ID}-00", "x-request-id": unsampled_id}
            assert http.post("/jotc", json={"clouds": [0, 0]}, headers=unsampled).status_code == 200

        def trace_in() -> bool:
            names = {span.name for _, span in receiver.received()}
            return {"POST /jumps", "recorder batch commit"} <= names

        wait_until(trace_in, timeout=30, what="the request's trace at the receiver")
        wait_until(lambda: request_id in api.log(), timeout=10, what="the request's access line")
        wait_until(lambda: unsampled_id in api.log(), timeout=10, what="the unsampled request's access line")
    finally:
        api.stop()

    spans = {span.name: span for service, span in receiver.received() if span.trace_id.hex() == TRACE_ID}
    assert {service for service, _ in receiver.received()} == {"jotc-api-under-test"}
    server = spans["POST /jumps"]
    assert server.parent_span_id.hex() == PARENT_ID
    assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
    inner = {name for name, span in spans.items() if span.parent_span_id == server.span_id}
    assert inner == {"redis idempotency claim", "parse", "solve", "wait for commit", "redis idempotency keep"}
    (batch,) = [span for _, span in receiver.received() if span.name == "recorder batch commit"]
    assert batch.trace_id.hex() != TRACE_ID
    assert [(link.trace_id.hex(), link.span_id) for link in batch.links] == [
        (TRACE_ID, spans["wait for commit"].span_id)
    ]
    assert server.attributes, "the served span's HTTP attributes"
    assert {a.key: a.value.int_value for a in server.attributes if a.key == "http.response.status_code"} == {
        "http.response.status_code": 201
    }
    lines = [json.loads(line) for line in api.log().splitlines() if request_id in line and line.startswith("{")]
    assert lines, "no log line of the request"
    assert all(line["trace_id"] == TRACE_ID and line["trace_sampled"] is True for line in lines)
    assert any(line["span_id"] == server.span_id.hex() for line in lines)
    untraced = [json.loads(line) for line in api.log().splitlines() if unsampled_id in line and line.startswith("{")]
    assert untraced, "no log line of the unsampled request"
    assert all(line["trace_id"] == UNSAMPLED_TRACE_ID and line["trace_sampled"] is False for line in untraced)
    assert not [span for _, span in receiver.received() if span.trace_id.hex() == UNSAMPLED_TRACE_ID]
