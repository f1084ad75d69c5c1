"""A measurement build: the served routes on Granian's RSGI interface, everything else bridged to ASGI.

This module exists to decide, by measurement, whether serving POST /jumps and POST /jotc through
RSGI pays (docs/performance.md, "Granian's ASGI interface, not RSGI"). Its served path does what
the ASGI one does for a request of the benchmark: the headers the pipeline and request_fields read,
the request id, ``Uploads`` (slot, memory charge, the read deadline) over a receive that hands the
whole body at once, the route, the security headers, Connection: close while draining and the
request metrics. CORS, the rate limit and tracing (off in the benchmark) and the access log (off by
default) are left out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian.asgi import LifespanProtocol
from granian.rsgi import Scope

from jotc_api import tracing
from jotc_api.app import create_app
from jotc_api.drain import DrainFlag
from jotc_api.logs import CURRENT_REQUEST_ID
from jotc_api.memory import give_back
from jotc_api.metrics import RequestTally
from jotc_api.pipeline import REQUEST_ID
from jotc_api.problems import Problem, incomplete_body, length_required
from jotc_api.served import answer_once, canonical_path, served_routes
from jotc_api.services import services_of
from jotc_api.settings import load_settings
from jotc_api.transport import Incoming, body_kind

ADDED = [("x-content-type-options", "nosniff"), ("server", ""), ("cache-control", "no-store")]


class ServedOnRSGI:
    """The RSGI application: served routes natively, the rest through the ASGI application."""

    def __init__(self) -> None:
        tracing.configure("jotc-api")
        settings = load_settings()
        self.drain = DrainFlag.attach()
        self.asgi = create_app(settings, drain=self.drain, keep_litestar=True)
        litestar = self.asgi.litestar  # type: ignore[attr-defined]
        self.table = served_routes(litestar)
        self.services = services_of(litestar)
        self.lifespan = LifespanProtocol(self.asgi)  # type: ignore[no-untyped-call]
        self.tally = RequestTally()
        self.draining = self.drain.view

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.lifespan.startup())  # type: ignore[no-untyped-call]

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.lifespan.shutdown())  # type: ignore[no-untyped-call]

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":
            return
        route = None
        if scope.method == "POST":
            route = self.table.get(scope.path) or self.table.get(canonical_path(scope.path))
        if route is None:
            await bridge(self.asgi, scope, protocol)
            return
        started = time.perf_counter()
        headers = scope.headers
        request_id = headers.get("x-request-id") or ""
        if not REQUEST_ID.fullmatch(request_id.encode()):
            request_id = secrets.token_hex(8)
        CURRENT_REQUEST_ID.set(request_id)
        host, _, port = scope.client.rpartition(":")
        asgi_scope: dict[str, Any] = {"client": (host, int(port or 0)), "headers": ()}
        try:
            # What the ASGI pipeline and request_fields read of the headers, read here too.
            if headers.get("transfer-encoding") is not None:
                raise length_required()
            headers.get("origin")
            if (headers.get("content-encoding") or "identity").strip().lower() != "identity":
                raise Problem(415, "unsupported-media-type", "Content-Encoding is not accepted")
            kind = body_kind(headers.get("content-type") or "", text_allowed=route.text)
            key = headers.get("idempotency-key")
            length = headers.get("content-length") or ""

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": await protocol(), "more_body": False}

            body = await self.services.uploads.receive(
                asgi_scope,  # type: ignore[arg-type]
                int(length) if length.isdigit() else -1,
                receive,  # type: ignore[arg-type]
            )
            if body is None:
                raise incomplete_body()
            incoming = Incoming(kind, key.encode() if key else None, scope.query_string.encode(), body)
            reply = await answer_once(self.services, route, incoming)
            status, answer, content = reply.status, reply.headers(), reply.body
        except Problem as problem:
            status, answer, content = problem.render()
        finally:
            give_back(asgi_scope)  # type: ignore[arg-type]
        out = [(name.decode(), value.decode()) for name, value in answer]
        out += ADDED
        out.append(("x-request-id", request_id))
        if self.draining[0]:
            out.append(("connection", "close"))
        protocol.response_bytes(status, out, content)
        self.tally.add("POST", route.path, status, time.perf_counter() - started)


async def bridge(app: Any, scope: Scope, protocol: HTTPProtocol) -> None:
    """One request through the ASGI application: its scope and messages built from RSGI's."""
    host, _, port = scope.client.rpartition(":")
    asgi_scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode(),
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in scope.headers.items()],
        "client": (host, int(port or 0)),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": await protocol(), "more_body": False}
        await protocol.client_disconnect()
        return {"type": "http.disconnect"}

    status = 500
    out: list[tuple[str, str]] = []
    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out
        if message["type"] == "http.response.start":
            status = message["status"]
            out = [(name.decode(), value.decode()) for name, value in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                protocol.response_bytes(status, out, b"".join(parts))

    await app(asgi_scope, receive, send)


def create() -> ServedOnRSGI:
    """Granian factory target (``jotc_api.rsgi:create``)."""
    return ServedOnRSGI()
