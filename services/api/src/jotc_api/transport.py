"""How a served route reads a request from raw ASGI, and sends its answer.

The headers it reads (``request_fields``: one Content-Type, Content-Length and Idempotency-Key),
what the Content-Type says the body is (``body_kind``: 415 before the body is read), the body
itself within every bound (``Uploads``: slots, per-client shares, memory, deadlines), and
``Reply``, a served route's answer, sent by ``send_answer``. served.py puts them together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from jotc_api.clients import Clients
from jotc_api.deadline import Deadline
from jotc_api.memory import SMALL_BODY, MemoryBudget, body_cost
from jotc_api.problems import (
    FieldError,
    Problem,
    body_longer_than_declared,
    body_timeout,
    body_too_large,
    body_too_slow,
    client_uploads_full,
    clip,
    uploads_full,
    validation_problem,
)

CLIENT_CLOSED_KEY = "jotc.client_closed"  # set on the scope when the body stopped short


class Reply(msgspec.Struct, frozen=True):
    status: int
    media_type: str
    body: bytes
    location: str | None = None
    replayed: bool = False
    record: str | None = None  # the recorded request behind the answer: replays rebuild from it
    owner: str | None = None  # whose request it was: erasure forgets their idempotency keys

    def extra_headers(self) -> dict[str, str]:
        extra = {"Location": self.location} if self.location else {}
        if self.replayed:
            extra["Idempotent-Replayed"] = "true"
        return extra

    def headers(self) -> list[tuple[bytes, bytes]]:
        raw = [(b"content-type", self.media_type.encode()), (b"content-length", str(len(self.body)).encode())]
        if self.location:
            raw.append((b"location", self.location.encode()))
        if self.replayed:
            raw.append((b"idempotent-replayed", b"true"))
        return raw


class Incoming(msgspec.Struct, frozen=True):
    """What a served route reads of a request, whichever transport brought it: ``kind`` is what
    the route's ``check`` made of its Content-Type."""

    kind: str
    idempotency_key: bytes | None
    query: bytes
    body: bytes


async def send_answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


SHARE_WAIT_SECONDS = 1.0  # how long a client past its share of upload slots waits for one of its own
# Before the body's minimum rate applies, and the longest it may pause once begun: a slow start, and
# a busy server's own delay in handing the body over, must not count against the client.
RATE_GRACE_SECONDS = 3.0
PAUSE_SECONDS = 3.0


async def read_body(
    receive: Receive,
    limit: int,
    timeout: float,
    length: int = -1,
    min_rate: int = 0,
    grace: float = RATE_GRACE_SECONDS,
) -> bytes | None:
    """The whole body within ``timeout`` seconds (else 408), refused with 413 as soon as it passes
    ``limit``; None if the client left. With ``min_rate`` (bytes a second), a body that falls
    behind that average rate after ``grace`` seconds, or pauses for PAUSE_SECONDS, is cut off
    with 408 as soon as it does, so a client that stalls cannot keep its upload slot (and its
    memory charge) for the whole timeout.

    ``length`` is the declared Content-Length (-1: none). Once that many bytes are in, the body is
    complete by HTTP's own framing, so the server's closing empty message is not awaited: Granian
    sends the bytes with ``more_body`` still true, and asking again is one more hand-over between
    its threads and the event loop. More bytes than declared are refused, whoever delivered them."""
    chunks: list[bytes] = []
    size = 0
    started = last = time.monotonic()
    ends = started + timeout
    # The first chunk is due within the grace; the usual body is whole in it, with nothing to work out.
    wait = min(timeout, grace) if min_rate else timeout
    rate_bound = wait < timeout
    while True:
        try:
            with Deadline(wait):
                message = await receive()
        except TimeoutError:
            raise (body_too_slow(min_rate) if rate_bound else body_timeout(timeout)) from None
        if message["type"] == "http.disconnect":
            return None
        chunk = cast("bytes", message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise body_too_large()
        if size > length >= 0:
            raise body_longer_than_declared()  # a server that does not enforce Content-Length
        chunks.append(chunk)
        if size == length or not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # The next chunk is due by the deadline or, with min_rate, before the body falls behind that
        # average; and keeping the average is not enough: a body that stops is cut off PAUSE_SECONDS
        # later too, so one that sends its first bytes early cannot bank them and then stall.
        now = time.monotonic()
        if chunk:
            last = now
        due = min(ends, started + grace + size / min_rate, last + PAUSE_SECONDS) if min_rate else ends
        rate_bound = due < ends
        wait = due - now


@dataclass(slots=True)
class Uploads:
    """How a served route receives its body, whichever transport brought the request, each bound
    checked from the headers before a byte of the body is read: refused from Content-Length
    (413); the most the body can cost charged to the worker's memory budget (503, memory.py); at
    most ``slots`` bodies received at once in this worker (503), and ``per_client`` of them from
    one client: a client past its share waits up to ``share_wait`` seconds for one of its own
    uploads to finish and hand its slot over (a burst from one address is served), then 503 (a
    client that stalls its uploads cannot take more); each body within ``seconds`` and never
    slower than ``min_rate`` (408)."""

    slots: int
    per_client: int
    max_body: int
    max_clouds: int
    seconds: float
    min_rate: int
    memory: MemoryBudget
    clients: Clients
    share_wait: float = SHARE_WAIT_SECONDS
    busy: int = 0
    queued: int = 0  # uploads waiting for a slot of their own client's
    by_client: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, deque[asyncio.Future[None]]] = field(default_factory=dict)

    async def receive(self, scope: Scope, content_length: int, receive: Receive) -> bytes | None:
        if content_length > self.max_body:
            raise body_too_large()
        client = self.clients.of(scope)
        if not self.slot_now(client):
            await self.take_slot(client)
        try:
            # Charged while holding the slot, so the line for memory is never longer than the slots;
            # a small body is covered by the allowance set aside for them (memory.py).
            if content_length > SMALL_BODY:
                cost = body_cost(content_length, self.max_clouds)
                if not self.memory.charge_now(scope, cost, client):
                    await self.memory.charge(scope, cost, client=client)
            return await read_body(receive, self.max_body, self.seconds, content_length, self.min_rate)
        finally:
            self.give_slot(client)

    def slot_now(self, client: str) -> bool:
        """A slot, when the client is within its share (the usual case, without a coroutine): True;
        503 when the worker has none left. False: the client is past its share, ``take_slot`` waits."""
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            return False
        if self.busy >= self.slots:
            raise uploads_full()
        self.busy += 1
        self.by_client[client] = held + 1
        return True

    async def take_slot(self, client: str) -> None:
        """Past its share, a client waits for one of its own slots (handed over by give_slot)."""
        if self.busy + self.queued >= self.slots:
            # Waiting requests hold the server's backpressure as uploads do: together they stay
            # within the slots, so the worker's other half stays free for probes and quick requests.
            raise client_uploads_full()
        handed = asyncio.get_running_loop().create_future()
        line = self.waiting.setdefault(client, deque())
        line.append(handed)
        self.queued += 1
        try:
            with Deadline(self.share_wait):
                await handed
        except BaseException as error:
            if handed.done() and not handed.cancelled():
                self.give_slot(client)  # handed over just as the wait ended: passed on
            elif handed in line:
                line.remove(handed)
            if not line and self.waiting.get(client) is line:
                del self.waiting[client]
            if isinstance(error, TimeoutError):
                raise client_uploads_full() from None
            raise
        finally:
            self.queued -= 1

    def give_slot(self, client: str) -> None:
        """The slot goes to the client's next waiting upload, else back to the worker."""
        line = self.waiting.get(client)
        while line:
            handed = line.popleft()
            if not handed.done():
                if not line:
                    del self.waiting[client]
                handed.set_result(None)
                return
        if line is not None:
            del self.waiting[client]
        self.busy -= 1
        if self.by_client[client] > 1:
            self.by_client[client] -= 1
        else:
            del self.by_client[client]


SINGLE_FIELDS = {
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
    b"content-encoding": "Content-Encoding",
    b"idempotency-key": None,
}


def request_fields(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, int, bytes | None]:
    """Content-Type, Content-Length (-1 if absent) and Idempotency-Key. Each may be given once: a
    repeated one is refused rather than guessed (a proxy in front may have read the other). A
    body framed by Transfer-Encoding never gets here: the response pipeline refuses it (411)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in SINGLE_FIELDS:
            if name in found:
                field = SINGLE_FIELDS[name]
                if field is None:
                    raise validation_problem([FieldError("Idempotency-Key", "must be given at most once")])
                raise Problem(400, "bad-request", f"{field} must be given at most once")
            found[name] = value
    encoding = found.get(b"content-encoding", b"identity").strip().lower()
    if encoding != b"identity":
        # Bodies are read as sent: a compressed one would be parsed as if it were not.
        raise Problem(
            415, "unsupported-media-type", f"Content-Encoding {clip(encoding.decode('latin-1'))!r} is not accepted"
        )
    length = found.get(b"content-length", b"")
    return (
        found.get(b"content-type", b"").decode("latin-1"),
        int(length) if length.isdigit() else -1,
        found.get(b"idempotency-key"),
    )


JSON = "application/json"
TEXT = "text/plain"
CHARSETS = {JSON: {"utf-8", "utf8"}, TEXT: {"utf-8", "utf8", "us-ascii", "ascii"}}


def body_kind(content_type: str, *, text_allowed: bool) -> str:
    """JSON or TEXT from a Content-Type header; 415 for anything else (before reading the body),
    a declared charset included: JSON is UTF-8, and the text form is ASCII digits."""
    kind, _, parameters = content_type.partition(";")
    kind = kind.strip().lower()
    if kind == JSON or (kind.startswith("application/") and kind.endswith("+json")):
        found = JSON
    elif text_allowed and kind == TEXT:
        found = TEXT
    else:
        found = ""
    charsets = [
        value.strip().strip('"').lower()
        for name, _, value in (p.partition("=") for p in parameters.split(";"))
        if name.strip().lower() == "charset"
    ]
    charset = charsets[0] if charsets else None
    if len(charsets) > 1:  # which one a proxy in front believed is anyone's guess: refuse
        raise Problem(415, "unsupported-media-type", "the charset parameter is given more than once")
    if found and (charset is None or charset in CHARSETS[found]):
        return found
    if found:
        raise Problem(415, "unsupported-media-type", f"charset {charset!r} is not accepted; {found} bodies are UTF-8")
    accepted = "application/json or text/plain" if text_allowed else "application/json"
    raise Problem(415, "unsupported-media-type", f"Content-Type {kind or '(none)'!r} is not accepted; send {accepted}")
