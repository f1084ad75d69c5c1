"""The locustfile's users as Locust loads them (in a separate process: importing Locust patches
the interpreter with gevent), sending real requests to a local server: each user reopens its
connection every JOTC_LT_CONNECTION_REQUESTS requests, so balancers spread the load over pods added
since, and with JOTC_LOADTEST_TOKEN each presents the token and a name of its own. The pool alone:
unit/test_connections.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "the-swarms-token-of-32-characters-or-more"  # pragma: allowlist secret
# Two users of the class Locust finds in the locustfile, each sending argv[2] GETs to argv[1].
SEND = """
import sys
from locust.env import Environment
from locust.util.load_locustfile import load_locustfile
import jotc_loadtest.locustfile as scenarios

users, _ = load_locustfile(scenarios.__file__)
(user_class,) = users.values()
user_class.host = sys.argv[1]
environment = Environment(user_classes=[user_class])
for user in (user_class(environment), user_class(environment)):
    for _ in range(int(sys.argv[2])):
        assert user.client.get("/jumps").status_code == 200
"""


@contextmanager
def recording_server() -> Iterator[tuple[str, list[tuple[int, dict[str, str]]]]]:
    """A keep-alive HTTP server; per request, the client's port (one per connection) and headers."""
    seen: list[tuple[int, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.client_address[1], {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def send(target: str, requests: int, **env: str) -> None:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("JOTC_", "LOCUST_"))}
    result = subprocess.run(
        [sys.executable, "-c", SEND, target, str(requests)],
        env={**inherited, "JOTC_TARGET": target, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"the users' requests failed (exit {result.returncode}): {result.stderr[-3000:]}"


def test_each_user_reopens_its_connection_and_names_itself() -> None:
    with recording_server() as (target, seen):
        send(target, 10, JOTC_LT_CONNECTION_REQUESTS="4", JOTC_LOADTEST_TOKEN=TOKEN)
    assert len(seen) == 20, seen
    connections: dict[str, list[int]] = defaultdict(list)
    for port, headers in seen:
        assert headers.get("jotc-loadtest-token") == TOKEN, headers
        if port not in connections[headers["jotc-loadtest-client"]]:
            connections[headers["jotc-loadtest-client"]].append(port)
    # Two users, two names; 10 requests at most 4 to a connection: 3 connections each.
    assert sorted(len(ports) for ports in connections.values()) == [3, 3], dict(connections)


def test_without_a_token_users_send_no_load_test_headers() -> None:
    with recording_server() as (target, seen):
        send(target, 2)
    assert len(seen) == 4, seen
    assert not [headers for _, headers in seen if any(name.startswith("jotc-loadtest") for name in headers)]
