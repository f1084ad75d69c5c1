"""Structured logs: JSON lines in containers, readable console output locally, and access lines.

The request id bound to every line of a request is set by the response
pipeline (pipeline.py), which also decides when an access line is written: one
per request when JOTC_ACCESS_LOG is on; for answers of 500 and above, always.

No line carries a raw control character, whatever a client sent (a request's
path is percent-decoded, so ``%1b`` is an escape character): JSON lines escape
them as JSON does (``\\u001b``), console lines as Python does (``\\x1b``). Raw, an
escape sequence recolours or rewrites the terminal that shows the log, and a
backspace or a NUL hides what came before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from opentelemetry import trace

from jotc_api import tracing

access_log = structlog.get_logger("jotc.access")

# The request being answered, set by the pipeline for every request: one context variable, read
# only when a line is written (structlog's bind_contextvars, with the clearing it needs, costs
# several times as much per request).
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("jotc_request_id", default=None)


def add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = CURRENT_REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """trace_id and span_id of the span active when the line is written, while tracing is on, and
    trace_sampled: whether that trace is exported (an unsampled request's trace_id leads nowhere)."""
    if tracing.tracer is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            trace_id, span_id = tracing.ids(context)
            event.setdefault("trace_id", trace_id)
            event.setdefault("span_id", span_id)
            event.setdefault("trace_sampled", context.trace_flags.sampled)
    return event


def escaped(text: str) -> str:
    """text with every character that is not printable (controls, format characters such as
    U+202E, line and paragraph separators) written as a Python literal writes it: ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


MULTILINE = {"exception", "stack"}  # tracebacks: their line breaks are the format


def escape_controls(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console lines only: the JSON renderer escapes every control character itself; the console
    renderer writes strings as they are."""
    for key, value in event.items():
        if isinstance(value, str) and not value.isprintable():
            event[key] = "\n".join(escaped(line) for line in value.split("\n")) if key in MULTILINE else escaped(value)
    return event


def configure_logging(level: str, fmt: str) -> None:
    shared: list[Any] = [
        add_request_id,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks as text, for libraries' records too (the console renderer's own rendering
    # prints local variables; JSON rendered a library's exc_info as three reprs).
    finish: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [
            structlog.processors.format_exc_info,
            escape_controls,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    )
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *finish],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: same format, same stream.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


ACCESS_FLUSH_SECONDS = 0.2


class AccessLog:
    """One access line per request. In JSON the line is encoded directly and written in batches
    (every ACCESS_FLUSH_SECONDS, and at shutdown): a write and flush per request would cost a large
    share of POST /jumps' throughput (docs/performance.md)."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"
        self.pending: list[bytes] = []
        self.encode = msgspec.json.encode

    def add(
        self,
        method: str,
        path: str,
        status: int,
        seconds: float,
        rid: str,
        traced: tuple[str, str, bool] | None = None,
    ) -> None:
        """``traced``: the request's server span (trace_id, span_id, sampled), when tracing is on."""
        ms = round(seconds * 1000, 2)
        ids = {"trace_id": traced[0], "span_id": traced[1], "trace_sampled": traced[2]} if traced is not None else {}
        if not self.json:
            access_log.info("request", method=method, path=path, status=status, ms=ms, **ids)
            return
        line: dict[str, object] = {
            "event": "request",
            "level": "info",
            "logger": "jotc.access",
            "timestamp": datetime.now(UTC).isoformat(),
            "request_id": rid,
            "method": method,
            "path": path,
            "status": status,
            "ms": ms,
            **ids,
        }
        if not self.pending:
            asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self.flush)
        # msgspec escapes C0 controls but writes DEL, C1 controls and U+202E as they are; a path
        # holding one (rare, hostile) is written as the standard library writes JSON: all escaped.
        encoded = self.encode(line) if path.isprintable() else json.dumps(line, separators=(",", ":")).encode()
        self.pending.append(encoded)

    def flush(self) -> None:
        if self.pending:
            lines, self.pending = self.pending, []
            sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
            sys.stdout.buffer.flush()
