"""The real command's upgrade as a span, with the revisions before and after, on the console; and
its run sent to every exporter an OTEL_TRACES_EXPORTER list names, OTLP/HTTP to a receiver this
test runs as well as the console."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import Migrate, spans_in

from jotc_migrations.cli import head_revision


class Receiver(ThreadingHTTPServer):
    """OTLP/HTTP's trace endpoint on a free port: the names of the spans POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.names: list[str] = []


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        export = ExportTraceServiceRequest.FromString(
            self.rfile.read(int(self.headers["content-length"]))
        )
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.server.names.extend(span.name for span in scope.spans)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:  # closed on the way out
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server
        server.shutdown()


def test_an_upgrade_is_a_span_naming_the_revisions(migrate: Migrate) -> None:
    result = migrate.ok("upgrade", env={"OTEL_TRACES_EXPORTER": "console"})
    (span,) = spans_in(result.stderr)
    assert span["attributes"] == {
        "jotc.migrate.command": "upgrade",
        "db.migration.from": "empty",
        "db.migration.to": head_revision(),
        "process.exit.code": 0,
    }
    assert "upgraded from empty" in result.stderr


def test_a_run_goes_to_every_exporter_the_list_names(migrate: Migrate, receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    env = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    result = migrate.ok("head", env=env)
    assert [span["name"] for span in spans_in(result.stderr)] == ["jotc-migrate"]
    assert receiver.names == ["jotc-migrate"], "exported to the receiver before the command exited"
