"""How a simulated user connects to the target, read from the environment:

- Bounded reuse (JOTC_LT_CONNECTION_REQUESTS, JOTC_LT_CONNECTION_SECONDS): a user sends at most so
  many requests, for at most so long, over one connection, then opens a new one. kube-proxy and the
  ingress controller's Service place connections, not requests: without reopening, a user stays on
  the pod it first reached, and pods the HPA adds receive nothing.
- Connect-to (JOTC_LT_CONNECT_TO, `host[:port]`): connections to the target's host go to this
  address instead (in a cluster, the ingress controller's Service), while the Host header, TLS SNI
  and the certificate check stay the target's, as for a client outside.
- TLS (JOTC_LT_TLS_VERIFY, JOTC_LT_CA_FILE): the target's certificate is checked, against the CA
  file when given, else the public CAs; off only when JOTC_LT_TLS_VERIFY is false.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent.ssl
from geventhttpclient.client import HTTPClient, HTTPClientPool
from geventhttpclient.url import URL

DEFAULT_TARGET = "http://api:4000"
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")


def target_of(env: Mapping[str, str]) -> str:
    """The base URL the swarm sends to: LOCUST_HOST (Locust's own), else JOTC_TARGET."""
    return env.get("LOCUST_HOST") or env.get("JOTC_TARGET") or DEFAULT_TARGET


@dataclass(frozen=True)
class ConnectionSettings:
    max_requests: int = 100
    max_seconds: float = 30.0
    connect_to: tuple[str, int | None] | None = None
    verify: bool = True
    ca_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConnectionSettings:
        """The settings in env; ValueError naming the variable and what it needs when one is wrong."""
        defaults = cls()
        return cls(
            max_requests=int(bounded(env, "JOTC_LT_CONNECTION_REQUESTS", defaults.max_requests, whole=True)),
            max_seconds=bounded(env, "JOTC_LT_CONNECTION_SECONDS", defaults.max_seconds, whole=False),
            connect_to=host_port(env.get("JOTC_LT_CONNECT_TO", "").strip()),
            verify=boolean(env, "JOTC_LT_TLS_VERIFY", defaults.verify),
            ca_file=ca_file(env.get("JOTC_LT_CA_FILE", "").strip()),
        )


def bounded(env: Mapping[str, str], name: str, default: float, *, whole: bool) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = 0
    if not value > 0:
        kind = "a whole number" if whole else "a number of seconds"
        raise ValueError(f"{name} must be {kind} above 0, got {raw!r}")
    return value


def host_port(raw: str) -> tuple[str, int | None] | None:
    if not raw:
        return None
    match = HOST_PORT.fullmatch(raw)
    port = int(match["port"]) if match and match["port"] else None
    if not match or (port is not None and not 1 <= port <= 65535):
        raise ValueError(
            f"JOTC_LT_CONNECT_TO must be host or host:port, such as ingress-nginx-controller.ingress-nginx.svc:443, "
            f"got {raw!r}"
        )
    return match["host"].strip("[]"), port


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in BOOLEANS:
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    return BOOLEANS[raw]


def ca_file(raw: str) -> str | None:
    if raw and not Path(raw).is_file():
        raise ValueError(f"JOTC_LT_CA_FILE is {raw!r}, which is not a file: mount the CA bundle there or unset it")
    return raw or None


def ssl_context_factory(settings: ConnectionSettings) -> Callable[..., Any]:
    """What geventhttpclient calls for each TLS connection pool, with the public CAs as `cafile`;
    settings.ca_file replaces them. Checks off only when settings.verify is false."""

    def factory(cafile: str | None = None) -> Any:
        context = gevent.ssl.create_default_context(cafile=settings.ca_file or cafile)
        if not settings.verify:
            context.check_hostname = False
            context.verify_mode = gevent.ssl.CERT_NONE
        return context

    return factory


class Connections(HTTPClientPool):
    """One simulated user's HTTP clients (Locust's FastHttpUser takes it as client_pool). Every
    ``max_requests`` requests, or once its first connection is ``max_seconds`` old, the user's
    connections are closed and the next request opens a new one. Requests to ``target``'s host
    connect to ``connect_to`` when given, keeping the target's Host header and TLS server name."""

    def __init__(
        self,
        settings: ConnectionSettings,
        target: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        **client_args: Any,
    ) -> None:
        super().__init__(**client_args)
        self.settings = settings
        self.target_host = urlsplit(target).hostname
        self.clock = clock
        self.served = 0
        self.opened_at = 0.0

    def get_client(self, url: str | URL) -> HTTPClient:
        if not isinstance(url, URL):
            url = URL(url)
        now = self.clock()
        if self.clients and (
            self.served >= self.settings.max_requests or now - self.opened_at >= self.settings.max_seconds
        ):
            self.close()
        if not self.clients:
            self.served, self.opened_at = 0, now
        self.served += 1
        key = (url.host, url.port)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = self.client_for(url)
        return client

    def client_for(self, url: URL) -> HTTPClient:
        connect_to = self.settings.connect_to
        if connect_to is None or url.host != self.target_host:
            return HTTPClient.from_url(url, **self.client_args)
        host, port = connect_to
        https = url.scheme == "https"
        # ssl_options, even empty, turns TLS on: given for https only.
        tls = {"server_hostname": url.host} if https else None
        return HTTPClient(
            host, port=port or url.port, ssl=https, ssl_options=tls, headers={"Host": url.netloc}, **self.client_args
        )


def user_connections(env: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> Connections:
    """A simulated user's connections as the environment sets them. One greenlet runs a user, so
    one connection at a time; the timeouts are Locust's FastHttpUser defaults."""
    settings = ConnectionSettings.from_env(env)
    return Connections(
        settings,
        target_of(env),
        clock=clock,
        concurrency=1,
        connection_timeout=60.0,
        network_timeout=60.0,
        ssl_context_factory=ssl_context_factory(settings),
        insecure=not settings.verify,
    )
