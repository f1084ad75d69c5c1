"""How a simulated user connects (connections.py), in process against local servers: each
connection serves a bounded number of requests, for a bounded time, so balancers can place new
connections on new pods; connect-to sends the target's Host header and TLS server name to another
address, and the certificate is checked against the target's name. The settings, and each wrong
value's one-line refusal."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jotc_loadtest.connections import Connections, ConnectionSettings, ssl_context_factory, user_connections

HOST = "jotc.test"  # resolves nowhere: reached only through connect-to


@dataclass
class Seen:
    """What a server saw: per request, the client's port (one per connection) and its Host header;
    per TLS handshake, the server name the client asked for."""

    requests: list[tuple[int, str]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len({port for port, _ in self.requests})


@contextmanager
def server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, Seen]]:
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the API and the ingress

        def do_GET(self) -> None:
            seen.requests.append((self.client_address[1], self.headers.get("host", "")))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        tls.sni_callback = lambda _socket, name, _context: seen.server_names.append(name)  # type: ignore[assignment,func-returns-value]
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for HOST (its own CA), key beside it."""
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={HOST}"),
            *("-addext", f"subjectAltName=DNS:{HOST}", "-keyout", str(directory / "key.pem")),
            *("-out", str(directory / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "cert.pem"


def tls_server_context(certificate: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, certificate.with_name("key.pem"))
    return context


def get(pool: Connections, base: str) -> int:
    """GET base + /jumps through the pool, as Locust's client sends a request; the status."""
    response = pool.get_client(base + "/jumps").get("/jumps")
    response.read()
    return int(response.status_code)


def per_connection(seen: Seen) -> list[int]:
    """How many requests each connection carried, in the order they were opened."""
    counts: dict[int, int] = {}
    for port, _ in seen.requests:
        counts[port] = counts.get(port, 0) + 1
    return list(counts.values())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_serves_at_most_max_requests() -> None:
    with server() as (port, seen):
        pool = user_connections({"JOTC_TARGET": f"http://127.0.0.1:{port}", "JOTC_LT_CONNECTION_REQUESTS": "3"})
        for _ in range(7):
            assert get(pool, f"http://127.0.0.1:{port}") == 200
    assert per_connection(seen) == [3, 3, 1], seen.requests


def test_a_connection_is_kept_at_most_max_seconds() -> None:
    clock = Clock()
    with server() as (port, seen):
        env = {"JOTC_TARGET": f"http://127.0.0.1:{port}", "JOTC_LT_CONNECTION_SECONDS": "30"}
        pool = user_connections(env, clock=clock)
        for step in (0, 10, 19.9, 0.1, 29, 31):  # the clock moves by step before each request
            clock.now += step
            assert get(pool, f"http://127.0.0.1:{port}") == 200
    # Opened at 0 (requests at 0, 10, 29.9), again at 30 (30, 59), again at 90.
    assert per_connection(seen) == [3, 2, 1], seen.requests


def test_the_defaults_bound_reuse_and_check_certificates() -> None:
    settings = ConnectionSettings.from_env({})
    assert (settings.max_requests, settings.max_seconds, settings.verify) == (100, 30.0, True)
    assert settings.connect_to is None
    assert settings.ca_file is None


def test_connect_to_keeps_the_targets_host_header() -> None:
    with server() as (port, seen):
        env = {"JOTC_TARGET": f"http://{HOST}", "JOTC_LT_CONNECT_TO": f"127.0.0.1:{port}"}
        pool = user_connections(env)
        assert get(pool, f"http://{HOST}") == 200
        # Any other host is reached as itself (the UI may retarget the swarm).
        assert get(pool, f"http://localhost:{port}") == 200
    assert [host for _, host in seen.requests] == [HOST, f"localhost:{port}"]


def test_connect_to_over_tls_checks_the_targets_certificate(certificate: Path) -> None:
    with server(tls_server_context(certificate)) as (port, seen):
        env = {"JOTC_TARGET": f"https://{HOST}", "JOTC_LT_CONNECT_TO": f"127.0.0.1:{port}"}
        pool = user_connections({**env, "JOTC_LT_CA_FILE": str(certificate)})
        assert get(pool, f"https://{HOST}") == 200
        assert seen.requests[-1][1] == HOST
        assert seen.server_names == [HOST]
        # Without the CA that signed it, the certificate is refused ...
        with pytest.raises(ssl.SSLCertVerificationError):
            get(user_connections(env), f"https://{HOST}")
        # ... as it is, with the CA, for a name it does not hold.
        wrong_name = {"JOTC_TARGET": "https://other.test", "JOTC_LT_CONNECT_TO": f"127.0.0.1:{port}"}
        with pytest.raises(ssl.SSLCertVerificationError):
            get(user_connections({**wrong_name, "JOTC_LT_CA_FILE": str(certificate)}), "https://other.test")
        # Only when asked is it not checked.
        assert get(user_connections({**env, "JOTC_LT_TLS_VERIFY": "false"}), f"https://{HOST}") == 200


def test_the_ca_file_replaces_the_public_cas(certificate: Path) -> None:
    settings = ConnectionSettings(ca_file=str(certificate))
    context = ssl_context_factory(settings)(cafile=None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", HOST),),)]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JOTC_LT_CONNECTION_REQUESTS", "0", "JOTC_LT_CONNECTION_REQUESTS must be a whole number above 0, got '0'"),
        ("JOTC_LT_CONNECTION_REQUESTS", "many", "JOTC_LT_CONNECTION_REQUESTS must be a whole number above 0"),
        ("JOTC_LT_CONNECTION_SECONDS", "-1", "JOTC_LT_CONNECTION_SECONDS must be a number of seconds above 0"),
        ("JOTC_LT_CONNECT_TO", "https://ingress", "JOTC_LT_CONNECT_TO must be host or host:port"),
        ("JOTC_LT_CONNECT_TO", "ingress:99999", "JOTC_LT_CONNECT_TO must be host or host:port"),
        ("JOTC_LT_TLS_VERIFY", "maybe", "JOTC_LT_TLS_VERIFY must be true or false, got 'maybe'"),
        ("JOTC_LT_CA_FILE", "/nowhere/ca.crt", "JOTC_LT_CA_FILE is '/nowhere/ca.crt', which is not a file"),
    ],
)
def test_a_wrong_value_is_refused_naming_it(variable: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as refused:
        ConnectionSettings.from_env({variable: value})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ingress-nginx-controller.ingress-nginx.svc", ("ingress-nginx-controller.ingress-nginx.svc", None)),
        ("ingress-nginx-controller.ingress-nginx.svc:443", ("ingress-nginx-controller.ingress-nginx.svc", 443)),
        ("10.0.0.7:80", ("10.0.0.7", 80)),
        ("[fd00::7]:8443", ("fd00::7", 8443)),
    ],
)
def test_connect_to_takes_a_host_and_an_optional_port(value: str, expected: tuple[str, int | None]) -> None:
    assert ConnectionSettings.from_env({"JOTC_LT_CONNECT_TO": value}).connect_to == expected
