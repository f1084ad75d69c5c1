"""Errors as RFC 9457 problem details (application/problem+json), and what each kind means.

Every error the API sends is a Problem: raised anywhere, rendered by
``Problem.render`` whichever layer answers (Litestar's exception handlers, the
fast path, the rate limiter, the response pipeline's last resort). ``type`` is
a relative URI, ``/problems/<kind>``, which the API itself serves as a short
explanation. A kind raised from more than one place has one constructor here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

PROBLEM_JSON = "application/problem+json"
PROBLEM_JSON_BYTES = PROBLEM_JSON.encode()
RETRY_AFTER_SECONDS = "2"


class Kind(NamedTuple):
    """A kind of problem: the status it is sent with, its title, and what it means and what to do
    (served at GET /problems/<kind>; docs/api.md's table of kinds is checked against this one)."""

    status: int
    title: str
    meaning: str


# Every kind the API sends. ``bad-request`` also stands for any other 4xx the framework answers.
KINDS: dict[str, Kind] = {
    "malformed-body": Kind(
        400,
        "Malformed request body",
        "The body could not be parsed: invalid JSON, or text/plain that is not two lines "
        "(n, then n space-separated 0/1 values), or a count n that does not match the values.",
    ),
    "validation": Kind(
        422,
        "Request failed validation",
        "The body parsed, but a field breaks a rule; `errors` names each field and the rule.",
    ),
    "unreachable": Kind(
        422,
        "Last cloud is unreachable",
        "max_jump or more thunderheads stand in a row, so no path exists; `blocked_at` is the "
        "index of the first thunderhead of the first such run.",
    ),
    "body-too-large": Kind(
        413,
        "Request body too large",
        "The body is larger than JOTC_MAX_BODY_BYTES. Send fewer clouds, or the digit-string "
        "form, which is half the size of a JSON array.",
    ),
    "body-timeout": Kind(
        408,
        "Request body too slow",
        "The body did not arrive within JOTC_BODY_READ_TIMEOUT seconds of the headers; nothing was "
        "recorded and the connection is closed. Send the whole body promptly.",
    ),
    "length-required": Kind(
        411,
        "Content-Length required",
        "A body must be sent with Content-Length. Transfer-Encoding (chunked or any other coding) is "
        "refused: a body framed two ways is how requests are smuggled past proxies.",
    ),
    "unsupported-media-type": Kind(
        415,
        "Unsupported media type",
        "Send Content-Type: application/json, or text/plain with the HackerRank input format.",
    ),
    "not-found": Kind(404, "Not found", "Nothing exists at this URL, or the record was deleted."),
    "method-not-allowed": Kind(405, "Method not allowed", "This URL does not accept that method."),
    "database-unavailable": Kind(
        503,
        "Database unavailable",
        "PostgreSQL could not be reached or did not commit; nothing was recorded. Retry after "
        "the number of seconds in Retry-After.",
    ),
    "overloaded": Kind(
        503,
        "Service overloaded",
        "This worker is at one of its bounds (requests waiting for the database, bodies being "
        "received, this client's share of them, or the memory requests may hold); nothing was "
        "recorded. Retry after Retry-After seconds.",
    ),
    "unauthorized": Kind(401, "Unauthorized", "Send Authorization: Bearer <JOTC_ADMIN_TOKEN>."),
    "rate-limited": Kind(
        429,
        "Too many requests",
        "This client address spent its budget for the current window (JOTC_RATE_LIMIT); retry after "
        "Retry-After seconds.",
    ),
    "idempotency-key-reused": Kind(
        422,
        "Idempotency-Key reused with a different request",
        "The key was first used with another body (or route, query or content type); use a new key for a new request.",
    ),
    "idempotency-in-flight": Kind(
        409,
        "Request with this Idempotency-Key still in flight",
        "The first request with this key has not finished; retry shortly to get its answer.",
    ),
    "idempotency-unavailable": Kind(
        503,
        "Idempotency keys unavailable",
        "Redis, which keeps idempotency keys, cannot be reached, so the promise cannot be kept. "
        "Retry later, or send the request without the key.",
    ),
    "erased": Kind(
        410,
        "Erased",
        "The request this Idempotency-Key was first used for was recorded, then erased by an "
        "administrator; its answer is gone with it. Send a new request with a new key.",
    ),
    "bad-request": Kind(400, "Bad request", "The request could not be understood."),
    "internal": Kind(
        500,
        "Internal server error",
        "An unexpected error; the request id in X-Request-ID finds it in the logs.",
    ),
}


class FieldError(msgspec.Struct, frozen=True):
    """One broken rule: the field (a body member, a query parameter or a header) and the rule."""

    field: str
    message: str


class ProblemDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of every error answer (RFC 9457): what is encoded and what the OpenAPI document
    declares. ``errors`` names each broken rule (validation); ``blocked_at`` is the first
    thunderhead of the run that makes the last cloud unreachable (unreachable)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    blocked_at: int | None = None


@dataclass(slots=True)
class Problem(Exception):
    """An error response: raise it from anywhere in a request."""

    status: int
    kind: str
    detail: str
    errors: list[FieldError] | None = None
    blocked_at: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The status is the kind's (KINDS), written at each raise to be read there; a raise that
        # disagrees with the table is a defect, found by the first test that reaches it.
        if self.status != KINDS[self.kind].status and not (self.kind == "bad-request" and 400 <= self.status < 500):
            raise ValueError(f"problem {self.kind!r} is sent with {KINDS[self.kind].status}, not {self.status}")

    def __str__(self) -> str:
        return f"{self.status} {self.kind}: {self.detail}"

    def render(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, raw headers and body: what every layer sends for this problem."""
        body = self.body()
        headers = [
            (b"content-type", PROBLEM_JSON_BYTES),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()),
        ]
        return self.status, headers, body

    def body(self) -> bytes:
        return msgspec.json.encode(
            ProblemDocument(
                type=f"/problems/{self.kind}",
                title=KINDS[self.kind].title,
                status=self.status,
                detail=self.detail,
                errors=self.errors,
                blocked_at=self.blocked_at,
            )
        )


MAX_FIELD_ERRORS = 20
MAX_ECHO = 80  # characters of client input a problem may repeat (a field name, a value)


def validation_problem(errors: list[FieldError]) -> Problem:
    """422 naming each broken rule. Bounded whatever the input: the first MAX_FIELD_ERRORS errors,
    and no more than MAX_ECHO characters of a client-made field name."""
    shown = [FieldError(clip(e.field), e.message) for e in errors[:MAX_FIELD_ERRORS]]
    detail = "; ".join(f"{e.field}: {e.message}" for e in shown)
    if len(errors) > MAX_FIELD_ERRORS:
        detail += f"; and {len(errors) - MAX_FIELD_ERRORS} more"
    return Problem(422, "validation", detail, errors=shown)


def clip(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"


def database_unavailable(detail: str) -> Problem:
    return Problem(503, "database-unavailable", detail, headers={"Retry-After": RETRY_AFTER_SECONDS})


def overloaded() -> Problem:
    return Problem(
        503,
        "overloaded",
        "too many requests are waiting for the database; nothing was recorded",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


# The body was not read to its end, so the connection cannot carry another request.
CLOSE = {"Connection": "close"}


def body_too_large() -> Problem:
    return Problem(413, "body-too-large", "the request body is larger than JOTC_MAX_BODY_BYTES allows", headers=CLOSE)


def body_timeout(seconds: float) -> Problem:
    return Problem(408, "body-timeout", f"the request body did not arrive within {seconds:g} s", headers=CLOSE)


def incomplete_body() -> Problem:
    return Problem(
        400, "malformed-body", "the request body ended before it was complete (broken framing?)", headers=CLOSE
    )


def body_longer_than_declared() -> Problem:
    return Problem(400, "malformed-body", "the request body is longer than its Content-Length", headers=CLOSE)


def body_too_slow(bytes_per_second: int) -> Problem:
    return Problem(
        408,
        "body-timeout",
        f"the request body arrived slower than {bytes_per_second} bytes a second (JOTC_BODY_MIN_RATE)",
        headers=CLOSE,
    )


def length_required() -> Problem:
    return Problem(
        411,
        "length-required",
        "send the body with Content-Length; Transfer-Encoding is not accepted",
        headers=CLOSE,
    )


def busy(detail: str) -> Problem:
    """503 overloaded before the body was read: nothing was recorded, and the connection closes."""
    return Problem(
        503, "overloaded", f"{detail}; nothing was recorded", headers={"Retry-After": RETRY_AFTER_SECONDS, **CLOSE}
    )


def uploads_full() -> Problem:
    return busy("too many request bodies are being received at once")


def client_uploads_full() -> Problem:
    return busy(
        "this client is already sending as many request bodies at once as one client may (JOTC_UPLOAD_SHARE_PERCENT)"
    )


def client_memory_full() -> Problem:
    return busy(
        "this client's requests already hold as much of this worker's memory as one client may "
        "(JOTC_UPLOAD_SHARE_PERCENT of JOTC_REQUEST_MEMORY)"
    )


def memory_full() -> Problem:
    return busy("this worker holds as much request data as its memory allows (JOTC_REQUEST_MEMORY)")


def internal_error() -> Problem:
    return Problem(500, "internal", "unexpected error; the X-Request-ID header finds it in the server log")


def erased() -> Problem:
    return Problem(410, "erased", "the request made with this Idempotency-Key was recorded and has since been erased")
