"""The response pipeline: what every answer gets on its way out, whichever layer produced it.

The outermost layer, so the fast path, the rate limiter's 429, Litestar's
routes and errors, and a crash that escapes them all leave through here:

- a request id: an incoming X-Request-ID when it is a sane token, else a fresh
  one; bound to every log line of the request and sent back in X-Request-ID;
- CORS exactly as JOTC_CORS_ORIGINS configures it (Litestar's CORSConfig
  decides what is allowed; preflights are answered here);
- security headers on every answer (no sniffing, no framing, no server name), and
  ``Cache-Control: no-store`` on every answer that sets no Cache-Control of its own;
- ``Connection: close`` while the server drains (drain.py), so kept-alive clients move to
  another instance before the listener closes;
- HEAD answered as GET without the body, for every GET route;
- the last resort: an exception that escapes every layer before the answer
  started becomes a problem+json 500 carrying the request id;
- the access line (logs.AccessLog) and the request metrics (metrics.RequestTally).

While tracing is on, one layer stands in front of it: a served route's server span
(served.server_spans, added by create_app).
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from jotc_api import tracing
from jotc_api.drain import DrainFlag
from jotc_api.logs import CURRENT_REQUEST_ID, AccessLog
from jotc_api.memory import give_back
from jotc_api.metrics import NOT_MEASURED, UNMATCHED, RequestTally, method_label
from jotc_api.problems import Problem, internal_error, length_required
from jotc_api.transport import CLIENT_CLOSED_KEY, send_answer

log = structlog.get_logger("jotc.app")

CLIENT_CLOSED = 499  # the status nginx logs for a client that left before its answer
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# On every answer: nosniff, and an empty Server header, which stops Granian from naming itself.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"server", b"")]
# On every page a browser renders (HTML: the docs UI at /schema, which takes the admin token):
# framed by another site, it could be clicked through. JSON and text answers render no page.
NO_FRAMING = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'")]
CONTENT_TYPE = b"content-type"
# Answers carry records, user names, statistics: no shared cache or browser keeps one (a cached
# record would outlive its erasure). What may be cached says so itself (the docs UI's files).
CACHE_CONTROL = b"cache-control"
NO_STORE = (CACHE_CONTROL, b"no-store")
CONNECTION_CLOSE = (b"connection", b"close")
# What a browser application may read of an answer beyond the CORS-safelisted headers.
EXPOSED_HEADERS = [
    "Location",
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Idempotent-Replayed",
    "WWW-Authenticate",
]


def cors_config(origins: tuple[str, ...]) -> CORSConfig | None:
    return CORSConfig(allow_origins=list(origins), expose_headers=EXPOSED_HEADERS) if origins else None


class Cors:
    """CORS headers for an answer, and preflight answers, as a CORSConfig says."""

    def __init__(self, config: CORSConfig) -> None:
        self.config = config
        self.simple = [(name.lower().encode(), value.encode()) for name, value in config.simple_headers.items()]

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """Vary: Origin on every answer (a shared cache must not give one origin's answer to
        another); the grant only to an allowed origin."""
        if origin is None:
            return [(b"vary", b"Origin")]
        headers = [*self.simple, (b"vary", b"Origin")]
        if not self.config.is_allow_all_origins and self.config.is_origin_allowed(origin):
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        return headers

    def preflight(
        self, origin: str, method: str, requested_headers: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        allowed_method = self.config.is_allow_all_methods or method in self.config.allow_methods
        if not self.config.is_origin_allowed(origin) or not allowed_method:
            return Problem(400, "bad-request", f"CORS preflight refused for origin {origin[:100]!r}").render()
        answer = dict(self.config.preflight_headers)
        if answer.get("Access-Control-Allow-Origin") != "*":
            answer["Access-Control-Allow-Origin"] = origin
            answer["Vary"] = "Origin"
        if requested_headers and self.config.is_allow_all_headers:
            # Any request header is allowed: name the ones asked for, which also works where a
            # wildcard does not (requests with credentials).
            answer["Access-Control-Allow-Headers"] = requested_headers
        return 204, [(name.lower().encode(), value.encode("latin-1")) for name, value in answer.items()], b""


def header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def response_pipeline(
    app: ASGIApp, *, cors: CORSConfig | None, access: bool, fmt: str, drain: DrainFlag | None = None
) -> ASGIApp:
    lines = AccessLog(fmt)
    draining = (drain or DrainFlag(bytearray(1))).view  # draining[0]: one memory read per answer
    tally = RequestTally()
    policy = Cors(cors) if cors is not None else None

    async def pipeline(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            lines.flush()  # after lifespan shutdown: the last lines and counts before exit
            tally.flush()
            return
        request_id = b""
        origin: str | None = None
        framed = False
        for name, value in scope["headers"]:  # one pass: this runs for every request
            if name == b"x-request-id":
                request_id = value
            elif name == b"origin" and policy is not None:
                origin = value.decode("latin-1")
            elif name == b"transfer-encoding":
                framed = True
        if not REQUEST_ID.fullmatch(request_id):
            request_id = secrets.token_hex(8).encode()
        rid = request_id.decode()
        CURRENT_REQUEST_ID.set(rid)
        added = [*SECURITY_HEADERS, (b"x-request-id", request_id)]
        if policy is not None:
            added += policy.headers(origin)
        started = time.perf_counter()
        status = 0
        method = scope["method"]
        if method == "HEAD":
            # HEAD is GET without the body, for every GET route (RFC 9110 9.3.2).
            scope = {**scope, "method": "GET"}

        async def send_through(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                own = message.get("headers", ())
                cached = page = False
                for name, value in own:  # the route's own: what is added sets neither
                    if name == CACHE_CONTROL:
                        cached = True
                    elif name == CONTENT_TYPE:
                        page = value.startswith(b"text/html")
                headers = [*own, *added]
                if not cached:
                    headers.append(NO_STORE)
                if page:
                    headers += NO_FRAMING
                if draining[0]:
                    headers.append(CONNECTION_CLOSE)
                message["headers"] = headers
                await send(message)
                status = message["status"]  # counted once it went out: a client that left gets 499
                return
            if method == "HEAD" and message["type"] == "http.response.body":
                message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
            await send(message)

        try:
            if policy is not None and origin is not None and method == "OPTIONS":
                requested = header(scope, b"access-control-request-method")
                if requested is not None:
                    asked = (header(scope, b"access-control-request-headers") or b"").decode("latin-1")
                    status_code, headers, body = policy.preflight(origin, requested.decode("latin-1"), asked)
                    added = [*SECURITY_HEADERS, (b"x-request-id", request_id)]
                    await send_answer(send_through, status_code, headers, body)
                    return
            if framed:
                # No route takes a body framed by Transfer-Encoding: the server reads a request framed
                # both ways as chunked and drops its Content-Length before we see it, so refusing the
                # header is the one way to refuse that request (a smuggling attempt's mark), on any route.
                await send_answer(send_through, *length_required().render())
                return
            if "\x00" in scope["path"]:  # no route has one; the static files router would crash on it
                await send_answer(send_through, *Problem(404, "not-found", "nothing here").render())
                return
            await app(scope, receive, send_through)
        except Exception as exc:
            log.error("unhandled error", exc_info=exc)
            if status:
                raise  # the answer has started: the server can only cut the connection
            await send_answer(send_through, *internal_error().render())
        finally:
            give_back(scope)  # the memory the request charged (memory.py): its answer is out
            # No answer went out, or the body stopped short (the client left, or its framing was
            # broken): a client close, never a server error.
            final = CLIENT_CLOSED if not status or scope.get(CLIENT_CLOSED_KEY) else status
            elapsed = time.perf_counter() - started
            if scope["path"] not in NOT_MEASURED:
                route = str(scope.get("path_template") or UNMATCHED)  # set by Litestar's router and the fast path
                tally.add(method_label(method), route, final, elapsed)
            if access or final >= 500:
                traced = tracing.SERVER_SPAN.get() if tracing.tracer is not None else None
                lines.add(method_label(method), scope["path"], final, elapsed, rid, traced)

    return pipeline
