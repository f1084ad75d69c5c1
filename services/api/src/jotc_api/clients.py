"""Who a request comes from, as every per-client bound counts it: the client's address, an IPv6
client's /64, and X-Forwarded-For believed only from trusted proxies (JOTC_TRUSTED_PROXIES); or,
for a request of the in-cluster load test that carries its token (JOTC_LOADTEST_TOKEN), the
simulated client it names, so that each Locust user is one client, as each real user is.

Rate limiting (ratelimit.py) and the per-client share of upload slots (transport.py) both key
their counts with ``Clients.of``, so one client is one client for every bound.

The token lets its holder name clients, so the names are bounded too: a worker tracks at most
MAX_SIMULATED_CLIENTS of them (per worker: Redis may see that many from each), and a new name past
that bound, while every tracked one was used in the last SIMULATED_IDLE_SECONDS, is counted by its
address instead. A swarm's users each keep their name for the whole run and send every few
seconds; a leaked token cannot make up clients without bound, in memory or in the rate limiter's
table, though its holder can keep every place taken and so count a real swarm's new users by
their address.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from litestar.types import Scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOADTEST_TOKEN_HEADER = b"jotc-loadtest-token"
LOADTEST_CLIENT_HEADER = b"jotc-loadtest-client"
SIMULATED_CLIENT = re.compile(rb"[A-Za-z0-9._-]{1,64}")
MAX_SIMULATED_CLIENTS = 10_000  # per worker: a swarm's users sending to it at once
SIMULATED_IDLE_SECONDS = 120.0  # past this without a request, a simulated client's place is free


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: "203.0.113.7", "203.0.113.7:5678", "2001:db8::1",
    "[2001:db8::1]:5678", optionally quoted; None for anything else."""
    candidate = text.strip().strip('"')
    if candidate.startswith("["):
        candidate = candidate[1:].partition("]")[0]
    elif candidate.count(":") == 1:
        candidate = candidate.partition(":")[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack listener is that IPv4 address.
    return address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address


def address_key(address: IPAddress | None) -> str:
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@functools.lru_cache(maxsize=4096)
def peer_key(peer: str) -> str:
    """The bucket of a peer's own address. A worker sees the same peers (clients, or the ingress's
    few addresses) again and again, and parsing one costs five times what admitting it does; the
    cache is bounded, so made-up peers only churn it."""
    return address_key(parse_address(peer))


class Clients:
    """The key of a request's client, given the proxies whose X-Forwarded-For is believed and the
    load test's token (None: no request is the load test's)."""

    def __init__(
        self,
        trusted_proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        loadtest_token: str | None = None,
        *,
        max_simulated: int = MAX_SIMULATED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trusted = tuple(trusted_proxies)
        self.loadtest_token = loadtest_token.encode("ascii") if loadtest_token else None
        self.max_simulated = max_simulated
        self.clock = clock
        self.simulated_seen: OrderedDict[str, float] = OrderedDict()  # name → last request, oldest first

    def of(self, scope: Scope) -> str:
        """The key of the client that sent this request."""
        client = scope.get("client")
        peer = client[0] if client else ""
        if self.loadtest_token is not None and (simulated := self.simulated(scope["headers"])) is not None:
            return simulated
        if not self.trusted:
            return peer_key(peer)
        forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"]
        return self.key(peer, forwarded)

    def simulated(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The load test's simulated client, ``loadtest:<name>``, when the request carries the
        load test's token (compared in constant time) and a valid client name; else None, and the
        request is counted by its address: a forged or missing token gains nothing."""
        expected = self.loadtest_token
        token = name = None
        for header, value in headers:
            if header == LOADTEST_TOKEN_HEADER:
                token = value
            elif header == LOADTEST_CLIENT_HEADER:
                name = value
        if expected is None or token is None or not hmac.compare_digest(token, expected):
            return None
        if name is None or not SIMULATED_CLIENT.fullmatch(name):
            return None
        return self.track("loadtest:" + name.decode("ascii"))

    def track(self, key: str) -> str | None:
        """``key`` while it has a place among the tracked simulated clients; None (counted by its
        address) when every place is taken by a client active within SIMULATED_IDLE_SECONDS."""
        now = self.clock()
        seen = self.simulated_seen
        if key in seen:
            seen.move_to_end(key)
        elif len(seen) >= self.max_simulated:
            oldest, last = next(iter(seen.items()))
            if now - last < SIMULATED_IDLE_SECONDS:
                return None
            del seen[oldest]
        seen[key] = now
        return key

    def key(self, peer: str, forwarded_for: list[str]) -> str:
        """The bucket a request counts against: its client's address, an IPv6 client's /64
        (one subscriber's allocation: made-up addresses inside it share one budget)."""
        if not forwarded_for:
            return peer_key(peer)
        return address_key(self.address(peer, forwarded_for))

    def address(self, peer: str, forwarded_for: list[str]) -> IPAddress | None:
        """The peer, unless it is a trusted proxy: then, reading X-Forwarded-For right to left
        (every line of it, as one list, RFC 9110 5.3), the first hop that is not a trusted proxy.
        A hop that is not an IP address ends the walk at the proxy that passed it on: what lies
        left of it was written by the client and is not believed."""
        current = parse_address(peer)
        if current is None or not forwarded_for or not self.is_trusted(current):
            return current
        hops = [hop for line in forwarded_for for hop in line.split(",")]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                return current
            if not self.is_trusted(address):
                return address
            current = address
        return current

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)
