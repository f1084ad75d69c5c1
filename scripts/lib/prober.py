"""scripts/prober: a steady, bounded stream of requests to JOTC's API while something happens to it (a
rolling restart, an upgrade, a rollback), then a count of the answers by status. It exits 1 when any
request failed (answered other than 2xx, or not at all), so a workflow step or a test can say
"nothing failed through the rollout" and show what did.

Each round is one client's visit: POST /jumps with a valid JSON body (docs/api.md), then GET of the
record its Location names; a POST answered 2xx without a Location fails, as the API names every
record it creates. Not GET /readyz: a draining instance answers it 503 by design (so that
balancers take it out) while it still serves every other request. A new connection carries each request, so
the draining instance's `Connection: close` and a balancer moving traffic are seen as a client sees
them. Rounds start at --rate a second; at most --in-flight rounds are outstanding at once (a slow
target slows the stream instead of piling requests on it). Over https, TLS asks for the Host's name
(SNI) and checks the certificate against it, so an ingress can be probed at its address with --host.

The standard library only: the machine's python3 runs it, in CI and here."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

BODY = json.dumps({"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "jotc-prober"}).encode()
POST_JUMPS = "POST /jumps"
GET_RECORD = "GET /jumps/{id}"
NO_ANSWER = "no answer"
# Failures written out as they happen (to stderr, with the time since the start); the rest are counted.
SHOWN_FAILURES = 100

DESCRIPTION = """\
Send a steady, bounded stream of requests to JOTC's API at URL until --duration seconds have passed
or SIGTERM/SIGINT arrives, then print the answers counted by request and status.

Each round: POST /jumps (a valid JSON body, user jotc-prober), then GET /jumps/{id} of the record
created. Every request on a new connection. Over https the TLS server name (SNI) and the name the
certificate must carry are the Host's (--host), not the address connected to.

Exit status: 0 when every request was answered 2xx; 1 when any was answered otherwise or not at all
(refused, reset, timed out), when a POST /jumps was answered 2xx without a Location, or when no
request was sent; 2 on a wrong option."""


@dataclass(frozen=True)
class Target:
    """Where the requests go: scheme, address and path prefix from the URL; Host, when given,
    replaces the URL's in the Host header and as the TLS server name (an Ingress rule reached
    through another address)."""

    scheme: str
    address: str
    port: int
    prefix: str
    host: str

    @classmethod
    def parse(cls, url: str, host: str | None) -> Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), host or parts.netloc)

    @property
    def server_name(self) -> str:
        """The name TLS asks for (SNI) and the certificate must carry: the Host's, without its port."""
        return urllib.parse.urlsplit(f"//{self.host}").hostname or self.address


@dataclass(frozen=True)
class Answer:
    request: str
    status: int | None  # None: no answer
    location: str = ""
    detail: str = ""  # why there was no answer, or the status's reason
    lacking: str = ""  # what a 2xx answer lacks that makes it a failure, e.g. "Location"

    @property
    def outcome(self) -> str:
        if self.status is None:
            return NO_ANSWER
        return f"{self.status} without {self.lacking}" if self.lacking else str(self.status)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.lacking


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to one address with the TLS server name (SNI) and certificate check of another name:
    an ingress reached at its address serves the certificate of the hosts it routes."""

    def __init__(self, address: str, port: int, *, server_name: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        self.tls.set_alpn_protocols(["http/1.1"])
        super().__init__(address, port, timeout=timeout, context=self.tls)
        self.server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.server_name)


def send(target: Target, request: str, path: str, body: bytes | None, timeout: float) -> Answer:
    """One request on a connection of its own, its body read to the end."""
    method = request.split()[0]
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = NamedHTTPSConnection(target.address, target.port, server_name=target.server_name, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(target.address, target.port, timeout=timeout)
    headers = {"Host": target.host, "Connection": "close", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, target.prefix + path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return Answer(request, response.status, response.getheader("Location") or "", response.reason)
    except (OSError, http.client.HTTPException) as error:
        return Answer(request, None, detail=f"{type(error).__name__}: {error}")
    finally:
        connection.close()


@dataclass
class Tally:
    """Answers counted by request and outcome, from the threads that send them."""

    started: float = field(default_factory=time.monotonic)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # the outcomes that are failures
    shown: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.counts[(answer.request, answer.outcome)] += 1
            if answer.ok:
                return
            self.failed[answer.outcome] += 1
            self.shown += 1
            shown = self.shown
        if shown <= SHOWN_FAILURES:
            at = time.monotonic() - self.started
            print(f"prober: {at:7.2f} s  {answer.request}: {answer.outcome} {answer.detail}", file=sys.stderr)
        if shown == SHOWN_FAILURES:
            print(f"prober: {SHOWN_FAILURES} failures shown; the rest are counted only", file=sys.stderr)

    def failures(self) -> Counter[str]:
        with self.lock:
            return Counter(self.failed)

    def as_json(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for (request, outcome), count in sorted(self.counts.items()):
            found.setdefault(request, {})[outcome] = count
        return found


def round_trip(target: Target, tally: Tally, timeout: float) -> None:
    """One round: create a record and read it back."""
    created = send(target, POST_JUMPS, "/jumps", BODY, timeout)
    if created.ok and not created.location:
        created = replace(created, lacking="Location")
    tally.add(created)
    if created.ok:
        path = urllib.parse.urlsplit(created.location).path
        tally.add(send(target, GET_RECORD, path.removeprefix(target.prefix), None, timeout))


def probe(
    target: Target, *, rate: float, duration: float, in_flight: int, timeout: float, stop: threading.Event
) -> Tally:
    """Rounds at `rate` a second, at most `in_flight` outstanding, until `duration` seconds pass (0:
    no end) or `stop` is set; returns once every round started has ended."""
    tally = Tally()
    slots = threading.BoundedSemaphore(in_flight)
    began = time.monotonic()

    def one_round() -> None:
        try:
            round_trip(target, tally, timeout)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="prober") as pool:
        number = 0
        while not stop.is_set():
            due = began + number / rate
            if duration and due - began >= duration:
                break
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            while not slots.acquire(timeout=0.1):  # every slot taken: the stream waits for the target
                if stop.is_set():
                    break
            else:
                pool.submit(one_round)
                number += 1
    return tally


def report(tally: Tally, target: Target, url: str, seconds: float) -> int:
    """The counts, printed; the exit status they call for."""
    total = sum(tally.counts.values())
    print(f"prober: {total} requests to {url} (Host: {target.host}) over {seconds:.1f} s")
    for request, outcomes in tally.as_json().items():
        counted = "  ".join(f"{outcome}: {count}" for outcome, count in outcomes.items())
        print(f"  {request:<16} {counted}")
    failed = tally.failures()
    if total == 0:
        print("prober: FAILED: no request was sent (stopped before the first round)")
        return 1
    if failed:
        named = ", ".join(f"{outcome}: {count}" for outcome, count in sorted(failed.items()))
        print(f"prober: FAILED: {sum(failed.values())} of {total} requests failed ({named})")
        return 1
    print("prober: every request answered 2xx")
    return 0


def positive(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return number


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/prober",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("url", help="the API's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--host",
        help="the Host header and, over https, the TLS server name and the certificate's name (default: the "
        "URL's), e.g. an Ingress rule's host",
    )
    parser.add_argument("--rate", type=positive, default=10, metavar="N", help="rounds started a second (10)")
    parser.add_argument(
        "--duration", type=float, default=0, metavar="S", help="seconds to run (default 0: until SIGTERM or SIGINT)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=16, metavar="N", help="rounds outstanding at the most (default 16)"
    )
    parser.add_argument(
        "--timeout", type=positive, default=10, metavar="S", help="seconds a request may take (default 10)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the counts to FILE as JSON")
    args = parser.parse_args(argv)
    if args.duration < 0:
        parser.error(f"--duration must be 0 or more, got {args.duration:g}")
    if args.in_flight < 1:
        parser.error(f"--in-flight must be 1 or more, got {args.in_flight}")
    try:
        args.target = Target.parse(args.url, args.host)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def stopped(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    began = time.monotonic()
    tally = probe(
        args.target,
        rate=args.rate,
        duration=args.duration,
        in_flight=args.in_flight,
        timeout=args.timeout,
        stop=stop,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(tally.as_json(), indent=2) + "\n")
    return report(tally, args.target, args.url, time.monotonic() - began)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
