"""scripts/bench --tracing's OTLP/HTTP traces receiver, run as a process of its own on 127.0.0.1: what
it spends is not counted as the API's CPU and does not share bench's interpreter.

POST /v1/traces with a protobuf ExportTraceServiceRequest is answered 200 with an empty
ExportTraceServiceResponse (no body, application/x-protobuf: full success; the OpenTelemetry
OTLP/HTTP exporter asks no more than a 2xx) and counted: the request, its spans and its bytes. A body
that is not a protobuf message, or is compressed (bench sets no OTEL_EXPORTER_OTLP_COMPRESSION), is
answered 4xx and counted as refused, so a wrong exporter shows in the counts instead of passing for
one that exported nothing. GET /received answers the counts as JSON, which bench reads once the
APIs have stopped. The standard library only: any python3 runs it.

Usage: python3 trace_receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRACES_PATH = "/v1/traces"
RECEIVED_PATH = "/received"


def varint(data: memoryview, at: int) -> tuple[int, int]:
    """The protobuf varint at ``at`` and where what follows it starts."""
    value = shift = 0
    while shift < 64:
        if at >= len(data):
            raise ValueError("a varint runs past the end")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError("a varint longer than 64 bits")


def embedded(message: memoryview, number: int) -> Iterator[memoryview]:
    """Each length-delimited field ``number`` of a protobuf message (an embedded message), the other
    fields skipped; ValueError where ``message`` is not protobuf's wire format."""
    at = 0
    while at < len(message):
        key, at = varint(message, at)
        wire = key & 7
        if key >> 3 == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, at = varint(message, at)
            continue
        if wire == 2:
            length, at = varint(message, at)
            end = at + length
        elif wire in (1, 5):  # 64 and 32 bits
            end = at + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        if end > len(message):
            raise ValueError("a field runs past the end")
        if wire == 2 and key >> 3 == number:
            yield message[at:end]
        at = end


def count_spans(request: bytes) -> int:
    """The spans of an ExportTraceServiceRequest: resource_spans (1), their scope_spans (2), theirs (2)."""
    scopes = (scope for resource in embedded(memoryview(request), 1) for scope in embedded(resource, 2))
    return sum(1 for scope in scopes for _ in embedded(scope, 2))


class Receiver(ThreadingHTTPServer):
    """Answers each connection in a thread of its own: every Granian worker's exporter keeps one open."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Answer)
        self.lock = threading.Lock()
        self.counts = {"exports": 0, "spans": 0, "bytes": 0, "refused": 0}

    def count(self, **added: int) -> None:
        with self.lock:
            for name, value in added.items():
                self.counts[name] += value


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's session sends every export on one connection
    server: Receiver

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True  # the body's end is unknown: the connection cannot be read on
            self.answer(411)
            return
        body = self.rfile.read(int(length))
        if self.path != TRACES_PATH:
            self.answer(404)
            return
        if self.headers.get("Content-Encoding", "identity") != "identity":
            self.refuse(415)
            return
        try:
            spans = count_spans(body)
        except ValueError:
            self.refuse(400)
            return
        self.server.count(exports=1, spans=spans, bytes=len(body))
        self.answer(200, content_type="application/x-protobuf")

    def do_GET(self) -> None:
        if self.path != RECEIVED_PATH:
            self.answer(404)
            return
        with self.server.lock:
            counts = json.dumps(self.server.counts).encode()
        self.answer(200, counts, "application/json")

    def refuse(self, status: int) -> None:
        self.server.count(refused=1)
        self.answer(status)

    def answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # a line per export would be all its log; errors are still written to stderr


if __name__ == "__main__":
    Receiver(int(sys.argv[1])).serve_forever()
