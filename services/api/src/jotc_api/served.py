"""The served routes: POST /jumps and POST /jotc answered from the raw request, on either transport.

A served route is declared once, with ``served_post`` (routes/jumps.py): Litestar routes it and
documents it from that declaration, and its handler there calls ``receive_and_serve``. Because
Litestar's per-request machinery costs more than solving and recording together
(docs/performance.md), ``fast_path`` answers the same routes before Litestar sees them, calling
the same ``receive_and_serve``; its table is read from Litestar's routes at start-up, so there is
nothing to keep in step by hand.

A POST /jumps body passes, in order: ``fast_path`` → ``receive_and_serve`` (``request_fields``,
``body_kind``, ``Uploads.receive`` → ``read_body``) → ``answer_once`` (``claim_key`` and
``keep_reply`` with an Idempotency-Key) → the route's ``answer`` (jumps.py: ``answer_jumps`` →
``parse_json`` or ``parse_text``, ``solve_and_record`` → ``Recorder.record``, ``jumps_reply``)
→ ``send_answer``.

While tracing is on, a served request's server span is made by ``server_spans``, in front of the
response pipeline, so that it holds every answer the route gives: the rate limiter's 429 and the
pipeline's 411 as well as the fast path's own. Litestar's integration never sees these requests;
the span is named and attributed as the integration names and attributes the other routes'
(tracing.http_server_attributes). create_app puts it there, with the fast path's routes; without
the fast path it is not added, and Litestar's integration traces the served routes too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.trace import SpanKind, Status, StatusCode

from jotc_api import tracing
from jotc_api.idempotency import StoredReply, claim_key, keep_reply
from jotc_api.problems import Problem, incomplete_body
from jotc_api.services import Services, services_of
from jotc_api.transport import CLIENT_CLOSED_KEY, Incoming, Reply, body_kind, request_fields, send_answer

SERVED = "served"  # the key of a handler's opt that carries its ServedRoute


@dataclass(frozen=True, slots=True)
class ServedRoute:
    """A POST route answered from the raw request. ``answer`` does its work; ``replay`` rebuilds
    the answer kept under an Idempotency-Key from the recorded request (its id) and the body's
    kind; ``text``: text/plain bodies are accepted besides JSON."""

    path: str
    answer: Callable[[Services, Incoming], Awaitable[Reply]]
    replay: Callable[[Services, str, str], Awaitable[Reply]]
    text: bool


async def receive_and_serve(services: Services, route: ServedRoute, scope: Scope, receive: Receive) -> Reply:
    """A served route's answer, from the raw request: the one way either transport runs it."""
    content_type, content_length, key = request_fields(scope["headers"])
    kind = body_kind(content_type, text_allowed=route.text)  # 415 before a byte of the body is read
    body = await services.uploads.receive(scope, content_length, receive)
    if body is None:
        # The body ended early: the client hung up (the answer then goes nowhere and the pipeline
        # counts a client close), or the server rejected its framing (broken chunked encoding):
        # the client must still get an answer.
        scope[CLIENT_CLOSED_KEY] = True  # type: ignore[literal-required]
        raise incomplete_body()
    return await answer_once(services, route, Incoming(kind, key, scope["query_string"], body))


async def answer_once(services: Services, route: ServedRoute, incoming: Incoming) -> Reply:
    """The route's answer; with an Idempotency-Key, the first request's answer to every repeat."""
    if incoming.idempotency_key is None:
        return await route.answer(services, incoming)
    with tracing.span("redis idempotency claim"):
        claimed = await claim_key(services.idempotency, route.path, incoming)
    if isinstance(claimed, StoredReply):
        return await replayed(services, route, incoming.kind, claimed)
    try:
        reply = await route.answer(services, incoming)
    except BaseException:
        # Nothing was recorded: the key is free again. A retry of a refusal gets the same refusal,
        # computed afresh (cheaper than keeping it), and a corrected request may use the key.
        with tracing.span("redis idempotency release"):
            await services.idempotency.release(claimed.name)
        raise
    with tracing.span("redis idempotency keep"):
        await keep_reply(services.idempotency, claimed, reply)
    return reply


async def replayed(services: Services, route: ServedRoute, kind: str, kept: StoredReply) -> Reply:
    assert kept.record is not None, "a finished request's key holds its record (keep_reply)"
    rebuilt = await route.replay(services, kind, kept.record)
    return Reply(rebuilt.status, rebuilt.media_type, rebuilt.body, rebuilt.location, replayed=True)


def served_routes(app: Litestar) -> dict[str, ServedRoute]:
    """Path → ServedRoute for every POST handler Litestar holds with a ServedRoute in its opt."""
    table: dict[str, ServedRoute] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            served = handler.opt.get(SERVED)
            if served is not None and "POST" in handler.http_methods:
                table[route.path] = served
    return table


def served_route(table: dict[str, ServedRoute], method: str, path: str) -> ServedRoute | None:
    """The served route a request is for, by the path Litestar's router would match; None for
    anything else (another method, another path)."""
    if method != "POST":
        return None
    return table.get(path) or table.get(canonical_path(path))


def canonical_path(path: str) -> str:
    """The path Litestar's router matches for this one ("/jumps/", "//jumps" → "/jumps")."""
    return "/" + "/".join(part for part in path.split("/") if part)


def fast_path(app: Litestar, inner: ASGIApp) -> ASGIApp:
    """Answer the served POST routes directly; pass everything else to ``inner``."""
    table = served_routes(app)
    services = services_of(app)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        route = served_route(table, scope["method"], scope["path"]) if scope["type"] == ScopeType.HTTP else None
        if route is None:
            await inner(scope, receive, send)
            return
        scope["path_template"] = route.path  # for the metrics layer, as Litestar's router does
        try:
            reply = await receive_and_serve(services, route, scope, receive)
        except Problem as problem:
            await send_answer(send, *problem.render())
            return
        await send_answer(send, reply.status, reply.headers(), reply.body)

    return serve


def server_spans(pipeline: ASGIApp, routes: dict[str, ServedRoute]) -> ASGIApp:
    """In front of the response pipeline while tracing is on: a request to one of ``routes`` (the
    fast path's) is the server span of its trace, continuing the caller's traceparent, from before
    the rate limiter to its answer."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        tracer = tracing.tracer
        if scope["type"] != ScopeType.HTTP or tracer is None:
            await pipeline(scope, receive, send)
            return
        tracing.SERVER_SPAN.set(None)  # set by the request's server span, if it gets one
        route = served_route(routes, scope["method"], scope["path"])
        if route is None:
            await pipeline(scope, receive, send)
            return
        caller = tracing.incoming(scope["headers"])
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            f"POST {route.path}", caller, SpanKind.SERVER, record_exception=False, set_status_on_exception=False
        ) as server:
            tracing.note_server_span(server)
            recording = server.is_recording()  # sampled: the attributes are worth computing
            if recording:
                server.set_attributes(tracing.http_server_attributes(scope, route.path))
            try:
                await pipeline(scope, receive, send_noting_status)
            except BaseException:
                # Past the answer's start (the pipeline answers 500 for what comes before): the
                # client got a cut answer, whatever its status said.
                if recording:
                    if status:
                        tracing.set_http_status(server, status)
                    server.set_status(Status(StatusCode.ERROR, "the answer was not completed"))
                raise
            if recording and status:
                tracing.set_http_status(server, status)

    return traced
