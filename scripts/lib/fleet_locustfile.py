"""The Locust swarm of scripts/fleet: the load test's own scenarios (services/loadtest, every answer
checked), each simulated user a client of its own, and every request written down for the fleet to
judge afterwards.

- Each user states an address of its own in X-Forwarded-For (198.18.0.0/15, the benchmarking
  range), as an edge before the balancer would: the API's rate limit counts each user apart, and
  the swarm stays far below the limit while the fleet's probe (one address) goes past it.
- Every request, in the Locust worker that sent it, is one line of ``JOTC_FLEET_RECORDS``/
  requests-<pid>.tsv: start (epoch seconds), response time (ms), status (0: no answer), method,
  and the record id a 201 from POST /jumps names in its Location. Lines are written as they happen
  (line-buffered), so a worker that dies keeps what it saw. A sixth column says who answered a
  5xx: "api" for the API's problem+json, "balancer" for HAProxy's own page.

Run by jotc-loadtest with LOCUST_LOCUSTFILE naming this file, in services/loadtest's environment;
the fleet's own code never imports it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, TextIO

# services/loadtest's environment, where Locust loads this file:
from jotc_loadtest.locustfile import user_class  # type: ignore[import-not-found,unused-ignore]
from locust import events  # type: ignore[import-not-found,unused-ignore]

RECORDS = os.environ.get("JOTC_FLEET_RECORDS", "")
_out: list[TextIO] = []


def identity(rng: random.Random) -> str:
    """A client address in 198.18.0.0/15 (RFC 2544, for benchmarks): one per simulated user."""
    return f"198.{rng.randint(18, 19)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


class FleetUser(user_class(os.environ)):  # type: ignore[misc]  # Locust's classes are untyped
    """The load test's scenarios with their weights (JOTC_LT_WEIGHT_*), as a client address of its own."""

    def __init__(self, environment: Any) -> None:
        # FastHttpUser gives default_headers to the session it builds in __init__: set it first.
        self.default_headers = {"X-Forwarded-For": identity(random.Random())}  # noqa: S311 - made-up addresses
        super().__init__(environment)


def record_line(start: float, milliseconds: float, status: int, method: str, location: str, media: str) -> str:
    request_id = location.rsplit("/", 1)[-1] if status == 201 and method == "POST" else ""
    origin = ("api" if media.startswith("application/problem+json") else "balancer") if status >= 500 else ""
    return f"{start:.3f}\t{milliseconds:.1f}\t{status}\t{method}\t{request_id}\t{origin}\n"


@events.request.add_listener  # type: ignore[untyped-decorator,unused-ignore]
def record(request_type: str, response_time: float, response: Any, start_time: float | None = None, **_: Any) -> None:
    if not RECORDS:
        return
    if not _out:
        path = Path(RECORDS) / f"requests-{os.getpid()}.tsv"
        _out.append(path.open("a", buffering=1))
    status = int(getattr(response, "status_code", 0) or 0)
    headers = getattr(response, "headers", None)
    location = str(headers.get("location", "") or "") if headers is not None else ""
    media = str(headers.get("content-type", "") or "") if headers is not None else ""
    _out[0].write(record_line(start_time or 0.0, response_time or 0.0, status, request_type, location, media))
