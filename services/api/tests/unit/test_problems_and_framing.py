"""Problems and how a body is received, in process: the problem constructors' statuses and headers,
Litestar's HTTP exceptions turned into problems, the body reader (client gone, chunks, the read
deadline, the upload slots), repeated header fields, and an incomplete body. No server, no sleep:
a body "too slow" is a receive() that never returns under a deadline of zero."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from litestar.exceptions import HTTPException

from jotc_api import app as app_module
from jotc_api import problems
from jotc_api.clients import Clients
from jotc_api.memory import HELD_KEY, SMALL_BODY, MemoryBudget, body_cost, give_back
from jotc_api.problems import FieldError, Problem
from jotc_api.served import ServedRoute, receive_and_serve
from jotc_api.services import Services
from jotc_api.transport import (
    CLIENT_CLOSED_KEY,
    Incoming,
    Reply,
    Uploads,
    read_body,
    request_fields,
)

Message = dict[str, Any]


def messages(*sent: Message) -> Callable[[], Awaitable[Message]]:
    """receive() of a request whose body arrives as these ASGI messages, in order."""
    queue = list(sent)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


async def never() -> Message:
    await asyncio.Event().wait()  # a client that sends nothing more
    raise AssertionError("unreachable")


def document(problem: Problem) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(problem.body())
    return decoded


def test_a_problem_reads_as_status_kind_and_detail() -> None:
    assert str(Problem(404, "not-found", "nothing here")) == "404 not-found: nothing here"


def test_validation_problem_shows_the_first_twenty_errors_and_counts_the_rest() -> None:
    errors = [FieldError(f"f{i}", "is wrong") for i in range(25)]
    problem = problems.validation_problem(errors)
    assert problem.status == 422
    assert [e.field for e in problem.errors or []] == [f"f{i}" for i in range(20)]
    assert problem.detail.endswith("; and 5 more")
    assert len(document(problem)["errors"]) == 20


def test_validation_problem_clips_a_long_field_name() -> None:
    problem = problems.validation_problem([FieldError("x" * 500, "is wrong")])
    shown = (problem.errors or [])[0].field
    assert len(shown) == problems.MAX_ECHO
    assert shown.endswith("…")


@pytest.mark.parametrize(
    ("make", "status", "kind", "headers"),
    [
        (problems.overloaded, 503, "overloaded", {"Retry-After": problems.RETRY_AFTER_SECONDS}),
        (lambda: problems.body_timeout(2.5), 408, "body-timeout", {"Connection": "close"}),
        (problems.incomplete_body, 400, "malformed-body", {"Connection": "close"}),
        (
            problems.uploads_full,
            503,
            "overloaded",
            {"Retry-After": problems.RETRY_AFTER_SECONDS, "Connection": "close"},
        ),
        (problems.body_too_large, 413, "body-too-large", {"Connection": "close"}),
    ],
)
def test_problem_constructors(make: Callable[[], Problem], status: int, kind: str, headers: dict[str, str]) -> None:
    problem = make()
    assert (problem.status, problem.kind, problem.headers) == (status, kind, headers)
    rendered_status, raw_headers, body = problem.render()
    assert rendered_status == status
    assert raw_headers[0] == (b"content-type", b"application/problem+json")
    assert (b"content-length", str(len(body)).encode()) in raw_headers
    for name, value in headers.items():
        assert (name.lower().encode(), value.encode()) in raw_headers
    assert document(problem)["type"] == f"/problems/{kind}"
    assert document(problem)["title"] == problems.KINDS[kind].title


def test_body_timeout_names_its_seconds() -> None:
    assert "within 2.5 s" in problems.body_timeout(2.5).detail
    assert "within 10 s" in problems.body_timeout(10.0).detail


# app.py: what Litestar raises, as the problems the contract promises.


def test_a_server_error_from_litestar_is_the_generic_500_problem() -> None:
    response = app_module.on_http_exception(None, HTTPException(status_code=500, detail="secret internals"))  # type: ignore[arg-type]
    assert response.status_code == 500
    assert response.media_type == problems.PROBLEM_JSON
    body = msgspec.json.decode(response.content)
    assert body["type"] == "/problems/internal"
    assert "secret internals" not in response.content.decode(), "a 500 never repeats what went wrong inside"


def test_a_413_from_litestar_is_the_body_too_large_problem() -> None:
    response = app_module.on_http_exception(None, HTTPException(status_code=413, detail="too big"))  # type: ignore[arg-type]
    assert response.status_code == 413
    assert msgspec.json.decode(response.content)["type"] == "/problems/body-too-large"
    assert response.headers["connection"] == "close", "the unread body cannot carry another request"


def test_parameter_errors_name_the_parameter_or_the_request() -> None:
    assert app_module.parameter_error({"key": "limit", "message": "Expected `int`"}) == FieldError(
        "limit", "expected int"
    )
    assert app_module.parameter_error({}) == FieldError("request", "is not valid")
    assert app_module.parameter_error("something odd") == FieldError("request", "something odd")


class FakeConnection:
    def __init__(self, log: list[str], number: int) -> None:
        self.log = log
        self.number = number

    async def execute(self, statement: Any) -> None:
        self.log.append(f"execute {self.number}: {statement}")

    async def rollback(self) -> None:
        self.log.append(f"end {self.number}")

    async def close(self) -> None:
        self.log.append(f"close {self.number}")


class FakeEngine:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.opened = 0

    async def connect(self) -> FakeConnection:
        self.opened += 1
        return FakeConnection(self.log, self.opened)


async def test_warm_up_opens_every_pooled_connection_and_gives_each_back() -> None:
    engine = FakeEngine()
    await app_module.warm_up(engine, 3)  # type: ignore[arg-type]
    assert engine.opened == 3, "all connections are open at once, so the pool really holds three"
    # Each transaction ends before the next connection's begins: behind a transaction-mode pooler
    # none holds a server connection while the others are opened.
    assert engine.log == [
        "execute 1: SELECT 1",
        "end 1",
        "execute 2: SELECT 1",
        "end 2",
        "execute 3: SELECT 1",
        "end 3",
        "close 1",
        "close 2",
        "close 3",
    ]


# transport.py: reading a body.


async def test_a_client_that_leaves_mid_body_reads_as_none() -> None:
    receive = messages({"type": "http.request", "body": b"12", "more_body": True}, {"type": "http.disconnect"})
    assert await read_body(receive, limit=100, timeout=5) is None


async def test_a_body_in_chunks_is_joined() -> None:
    receive = messages(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert await read_body(receive, limit=100, timeout=5) == b"abcd"


async def test_a_body_of_its_declared_length_is_complete_without_the_closing_message() -> None:
    # Granian sends a Content-Length body with more_body still true; messages() fails if asked again.
    receive = messages({"type": "http.request", "body": b"abcd", "more_body": True})
    assert await read_body(receive, limit=100, timeout=5, length=4) == b"abcd"


async def test_a_declared_length_in_chunks_is_read_up_to_that_length() -> None:
    receive = messages(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
    )
    assert await read_body(receive, limit=100, timeout=5, length=4) == b"abcd"


async def test_without_a_declared_length_the_closing_message_is_awaited() -> None:
    receive = messages(
        {"type": "http.request", "body": b"abcd", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    )
    assert await read_body(receive, limit=100, timeout=5) == b"abcd"
    with pytest.raises(IndexError):
        await receive()  # both messages were taken: the body ended at the closing one


async def test_more_bytes_than_declared_are_refused_whoever_delivered_them() -> None:
    receive = messages({"type": "http.request", "body": b"abcdef", "more_body": False})
    with pytest.raises(Problem) as refused:
        await read_body(receive, limit=100, timeout=5, length=4)
    assert (refused.value.status, refused.value.kind) == (400, "malformed-body")


async def test_a_declared_empty_body_is_read_from_its_first_message() -> None:
    receive = messages({"type": "http.request", "body": b"", "more_body": True})
    assert await read_body(receive, limit=100, timeout=5, length=0) == b""


async def test_a_body_past_the_limit_is_refused_as_soon_as_it_passes_it() -> None:
    receive = messages(
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
    )
    with pytest.raises(Problem) as refused:
        await read_body(receive, limit=100, timeout=5)
    assert refused.value.status == 413


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    with pytest.raises(Problem) as refused:
        await read_body(never, limit=100, timeout=0)
    assert (refused.value.status, refused.value.kind) == (408, "body-timeout")


async def test_a_body_that_falls_behind_the_minimum_rate_is_cut_off_before_the_timeout() -> None:
    receive = messages({"type": "http.request", "body": b"ab", "more_body": True})  # then nothing
    stalled = asyncio.Event()

    async def then_stall() -> Message:
        if not stalled.is_set():
            stalled.set()
            return await receive()
        return await never()

    with pytest.raises(Problem) as refused:
        await read_body(then_stall, limit=100, timeout=60, length=10, min_rate=1000, grace=0)
    assert (refused.value.status, refused.value.kind) == (408, "body-timeout")
    assert "slower than 1000 bytes a second" in refused.value.detail


async def test_a_body_that_keeps_the_minimum_rate_is_read() -> None:
    receive = messages(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
    )
    assert await read_body(receive, limit=100, timeout=5, length=4, min_rate=1000, grace=0.5) == b"abcd"


def make_uploads(**settings: Any) -> Uploads:
    defaults: dict[str, Any] = {
        "slots": 2,
        "per_client": 2,
        "max_body": 100,
        "max_clouds": 100,
        "seconds": 5,
        "min_rate": 0,
        "memory": MemoryBudget(10**9),
        "clients": Clients(()),
    }
    return Uploads(**(defaults | settings))


def from_client(address: str = "203.0.113.7") -> dict[str, Any]:
    return {"client": (address, 50000), "headers": []}


async def held_open(uploads: Uploads, scope: dict[str, Any]) -> tuple[asyncio.Task[bytes | None], asyncio.Event]:
    """An upload that has taken its slot and waits until the returned event is set."""
    entered, gate = asyncio.Event(), asyncio.Event()

    async def slow() -> Message:
        entered.set()
        await gate.wait()
        return {"type": "http.request", "body": b"done", "more_body": False}

    task = asyncio.create_task(uploads.receive(scope, 4, slow))  # type: ignore[arg-type]
    await asyncio.wait_for(entered.wait(), timeout=5)
    return task, gate


async def test_uploads_refuse_a_declared_length_over_the_limit_before_reading() -> None:
    uploads = make_uploads(max_body=10)
    with pytest.raises(Problem) as refused:
        await uploads.receive(from_client(), 11, never)  # type: ignore[arg-type]
    assert refused.value.status == 413
    assert uploads.busy == 0


async def test_uploads_refuse_a_body_when_every_slot_is_busy_and_free_the_slot_after() -> None:
    uploads = make_uploads(slots=1)
    first, gate = await held_open(uploads, from_client("203.0.113.1"))
    assert uploads.busy == 1
    with pytest.raises(Problem) as refused:
        await uploads.receive(from_client("203.0.113.2"), 4, never)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (503, "overloaded")
    gate.set()
    assert await asyncio.wait_for(first, timeout=5) == b"done"
    assert uploads.busy == 0, "the slot is given back once the body is in"


async def test_one_client_holds_at_most_its_share_of_the_slots_and_others_still_find_room() -> None:
    uploads = make_uploads(slots=4, per_client=2, share_wait=0.01)
    held = [await held_open(uploads, from_client("2001:db8::1")), await held_open(uploads, from_client("2001:db8::2"))]
    with pytest.raises(Problem) as refused:  # the same /64: the same client
        await uploads.receive(from_client("2001:db8::3"), 4, never)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (503, "overloaded")
    assert "this client" in refused.value.detail
    bystander, gate = await held_open(uploads, from_client("198.51.100.9"))
    for _, release in [*held, (bystander, gate)]:
        release.set()
    assert await asyncio.gather(bystander, *(task for task, _ in held)) == [b"done"] * 3
    assert (uploads.busy, uploads.by_client) == (0, {}), "every slot and every client's count given back"


async def test_a_burst_from_one_client_past_its_share_waits_for_its_own_slots() -> None:
    uploads = make_uploads(slots=4, per_client=1, share_wait=30)
    first, release = await held_open(uploads, from_client())
    read = messages({"type": "http.request", "body": b"next", "more_body": False})
    second = asyncio.create_task(uploads.receive(from_client(), 4, read))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not second.done(), "past its share: it waits for the client's own slot"
    assert uploads.busy == 1
    release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [b"done", b"next"]
    assert (uploads.busy, uploads.by_client, uploads.waiting) == (0, {}, {})


async def test_a_body_is_charged_to_the_memory_budget_before_it_is_read_and_refused_when_it_does_not_fit() -> None:
    size = SMALL_BODY + 1  # a small body is covered by the allowance set aside for them, not charged
    cost = body_cost(size, 1000)
    uploads = make_uploads(max_body=1000, max_clouds=1000, memory=MemoryBudget(cost * 2, wait_seconds=0))
    first, second = from_client("198.51.100.1"), from_client("198.51.100.2")
    read = messages({"type": "http.request", "body": b"x" * size, "more_body": False})
    assert await uploads.receive(first, size, read) == b"x" * size  # type: ignore[arg-type]
    assert uploads.memory.held == cost, "held until the answer has gone out, not until the body is in"
    read = messages({"type": "http.request", "body": b"x" * size, "more_body": False})
    await uploads.receive(second, size, read)  # type: ignore[arg-type]
    with pytest.raises(Problem) as refused:
        await uploads.receive(from_client("198.51.100.3"), size, never)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (503, "overloaded")
    assert "memory" in refused.value.detail
    give_back(first)  # type: ignore[arg-type]
    give_back(second)  # type: ignore[arg-type]
    assert uploads.memory.held == 0
    assert first[HELD_KEY].cost == 0, "given back once"
    small = from_client("198.51.100.4")
    read = messages({"type": "http.request", "body": b"{}", "more_body": False})
    assert await uploads.receive(small, 2, read) == b"{}"  # type: ignore[arg-type]
    assert HELD_KEY not in small


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ([(b"content-type", b"application/json"), (b"content-type", b"text/plain")], 400, "Content-Type"),
        ([(b"content-length", b"3"), (b"content-length", b"3")], 400, "Content-Length"),
        ([(b"content-encoding", b"identity"), (b"content-encoding", b"gzip")], 400, "Content-Encoding"),
        ([(b"idempotency-key", b"a"), (b"idempotency-key", b"b")], 422, "Idempotency-Key"),
    ],
)
def test_a_repeated_header_field_is_refused_not_guessed(
    headers: list[tuple[bytes, bytes]], status: int, words: str
) -> None:
    with pytest.raises(Problem) as refused:
        request_fields(headers)
    assert refused.value.status == status
    assert words in refused.value.detail


def test_request_fields_read_once_each() -> None:
    fields = [(b"content-type", b"text/plain"), (b"content-length", b"12"), (b"idempotency-key", b"k1")]
    assert request_fields(fields) == ("text/plain", 12, b"k1")
    assert request_fields([(b"content-length", b"-4")]) == ("", -1, None), "a length that is not digits is absent"


def test_a_replayed_reply_says_so_in_its_headers() -> None:
    reply = Reply(201, "application/json", b"{}", location="/jumps/1", replayed=True)
    assert reply.extra_headers() == {"Location": "/jumps/1", "Idempotent-Replayed": "true"}
    assert (b"idempotent-replayed", b"true") in reply.headers()
    assert Reply(200, "text/plain", b"4\n").extra_headers() == {}


async def test_a_body_that_stops_short_is_400_and_marks_the_client_closed() -> None:
    served: list[Incoming] = []

    async def answer(_: Services, incoming: Incoming) -> Reply:
        served.append(incoming)
        return Reply(200, "text/plain", b"ok")

    async def replay(_: Services, __: str, ___: str) -> Reply:
        raise AssertionError("no Idempotency-Key was sent")

    route = ServedRoute("/jumps", answer=answer, replay=replay, text=False)
    services = cast(Services, SimpleNamespace(uploads=make_uploads()))

    scope: dict[str, Any] = {"headers": [(b"content-type", b"application/json")], "query_string": b""}
    gone = messages({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(Problem) as refused:
        await receive_and_serve(services, route, scope, gone)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (400, "malformed-body")
    assert scope[CLIENT_CLOSED_KEY] is True, "the pipeline counts it as a client close (499), not a 400 sent"
    assert served == []

    scope = {"headers": [(b"content-type", b"application/json")], "query_string": b"user=a"}
    whole = messages({"type": "http.request", "body": b"{}", "more_body": False})
    assert (await receive_and_serve(services, route, scope, whole)).body == b"ok"  # type: ignore[arg-type]
    assert served == [Incoming("application/json", None, b"user=a", b"{}")]
    assert CLIENT_CLOSED_KEY not in scope
