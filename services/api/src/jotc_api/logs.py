"""Structured logs: JSON lines in containers, readable console output locally, and access lines.

The request id bound to every line of a request is set by the response
pipeline (pipeline.py), which also decides when an access line is written: one
per request when JOTC_ACCESS_LOG is on; for answers of 500 and above, always.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

access_log = structlog.get_logger("jotc.access")

# The request being answered, set by the pipeline for every request: one context variable, read
# only when a line is written (structlog's bind_contextvars, with the clearing it needs, cost ten
# times as much per request, issue 16).
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("jotc_request_id", default=None)


def add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = CURRENT_REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure_logging(level: str, fmt: str) -> None:
    shared: list[Any] = [
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: same format, same stream.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


ACCESS_FLUSH_SECONDS = 0.2


class AccessLog:
    """One access line per request. In JSON the line is encoded directly and written in batches
    (every ACCESS_FLUSH_SECONDS, and at shutdown): a write and flush per request cost a fifth of
    POST /jumps' throughput when measured, this costs a few percent."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"
        self.pending: list[bytes] = []
        self.encode = msgspec.json.encode

    def add(self, method: str, path: str, status: int, seconds: float, rid: str) -> None:
        ms = round(seconds * 1000, 2)
        if not self.json:
            access_log.info("request", method=method, path=path, status=status, ms=ms)
            return
        line = {
            "event": "request",
            "level": "info",
            "logger": "jotc.access",
            "timestamp": datetime.now(UTC).isoformat(),
            "request_id": rid,
            "method": method,
            "path": path,
            "status": status,
            "ms": ms,
        }
        if not self.pending:
            asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self.flush)
        self.pending.append(self.encode(line))

    def flush(self) -> None:
        if self.pending:
            lines, self.pending = self.pending, []
            sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
            sys.stdout.buffer.flush()
