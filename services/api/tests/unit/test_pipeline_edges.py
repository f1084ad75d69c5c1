"""The response pipeline called as ASGI, around a stand-in application: CORS when the request has no
Origin, a wildcard origin's preflight, an OPTIONS request that is not a preflight, and a crash after
the answer started (the connection is cut; no second answer). No server."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog
from litestar.config.cors import CORSConfig

from jotc_api.logs import add_request_id, configure_logging
from jotc_api.pipeline import cors_config, response_pipeline

Message = dict[str, Any]


def scope(method: str = "GET", path: str = "/healthz", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {"type": "http", "method": method, "path": path, "headers": headers or [], "query_string": b""}


async def nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class App:
    """Answers 200 "ok", or starts the answer and then fails when ``crash`` is set."""

    def __init__(self, *, crash: bool = False) -> None:
        self.crash = crash
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["method"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if self.crash:
            raise RuntimeError("failed mid-answer")
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def call(app: Any, request: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request, nothing, send)
    return sent


def headers_of(sent: list[Message]) -> dict[bytes, bytes]:
    return dict(sent[0]["headers"])


async def test_with_cors_on_an_answer_without_origin_only_says_it_varies_by_origin() -> None:
    pipeline = response_pipeline(App(), cors=cors_config(("https://app.example",)), access=False, fmt="json")
    headers = headers_of(await call(pipeline, scope()))
    assert headers[b"vary"] == b"Origin"
    assert b"access-control-allow-origin" not in headers


async def test_a_wildcard_origins_preflight_keeps_the_wildcard() -> None:
    pipeline = response_pipeline(App(), cors=CORSConfig(allow_origins=["*"]), access=False, fmt="json")
    request = scope(
        "OPTIONS", "/jumps", [(b"origin", b"https://any.example"), (b"access-control-request-method", b"POST")]
    )
    sent = await call(pipeline, request)
    assert sent[0]["status"] == 204
    headers = headers_of(sent)
    assert headers[b"access-control-allow-origin"] == b"*"
    assert b"vary" not in headers, "a wildcard answer is the same for every origin"
    assert b"access-control-allow-headers" not in headers, "none were asked for"


async def test_options_with_an_origin_but_no_requested_method_is_not_a_preflight() -> None:
    app = App()
    pipeline = response_pipeline(app, cors=cors_config(("https://app.example",)), access=False, fmt="json")
    sent = await call(pipeline, scope("OPTIONS", "/jumps", [(b"origin", b"https://app.example")]))
    assert app.calls == ["OPTIONS"], "the application answers it"
    headers = headers_of(sent)
    assert headers[b"access-control-allow-origin"] == b"https://app.example"


async def test_a_crash_after_the_answer_started_cuts_the_connection_rather_than_answer_twice() -> None:
    pipeline = response_pipeline(App(crash=True), cors=None, access=False, fmt="json")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="failed mid-answer"):
        await pipeline(scope(), nothing, send)
    assert [message["type"] for message in sent] == ["http.response.start"], "no 500 after a 200 started"


async def test_a_line_logged_while_answering_carries_the_request_id() -> None:
    written = io.StringIO()
    # The processor configure_logging puts first, on a logger of the test's own (configuring the
    # process's logging here would leave cached loggers writing to this test's stream).
    logged = structlog.wrap_logger(
        structlog.PrintLogger(written), processors=[add_request_id, structlog.processors.JSONRenderer()]
    )

    class Logs(App):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            logged.info("while answering")
            await super().__call__(scope, receive, send)

    pipeline = response_pipeline(Logs(), cors=None, access=False, fmt="json")
    await call(pipeline, scope(headers=[(b"x-request-id", b"trace-7")]))
    await call(pipeline, scope())
    first, second = (json.loads(line) for line in written.getvalue().splitlines())
    assert first["request_id"] == "trace-7"
    assert second["request_id"] not in ("trace-7", None), "each request has its own id, never the last one's"


def test_every_line_is_given_the_request_id_first() -> None:
    configure_logging("INFO", "json")
    assert structlog.get_config()["processors"][0] is add_request_id


@pytest.mark.parametrize("route", [("POST", "/jumps"), ("GET", "/healthz"), ("POST", "/admin/stats")])
@pytest.mark.parametrize("framing", [b"chunked", b"gzip, chunked", b"identity"])
async def test_a_request_framed_by_transfer_encoding_is_refused_on_every_route(
    route: tuple[str, str], framing: bytes
) -> None:
    app = App()
    pipeline = response_pipeline(app, cors=None, access=False, fmt="json")
    request = scope(*route, headers=[(b"content-length", b"2"), (b"transfer-encoding", framing)])
    sent = await call(pipeline, request)
    assert sent[0]["status"] == 411
    assert headers_of(sent)[b"connection"] == b"close"
    assert json.loads(sent[1]["body"])["type"] == "/problems/length-required"
    assert app.calls == [], "the application never sees it"
