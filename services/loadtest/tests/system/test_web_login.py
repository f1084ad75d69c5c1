"""Locust's web UI with a login, as jotc-loadtest serves it (JOTC_LT_WEB_USERNAME and
JOTC_LT_WEB_PASSWORD): every page and action of the UI sends a visitor without the session to the
login page, a wrong password is refused, the right one opens the UI. The command lines: unit/."""

from __future__ import annotations

import http.client
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from jotc_provision import free_port, start_server
from support import JOTC_LOADTEST, SKIP_MONKEY_PATCH

USERNAME = "operator"
PASSWORD = "the-operators-password-for-this-test"  # pragma: allowlist secret


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The UI role with a login, its target never contacted (no swarm is started without a login)."""
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if key != SKIP_MONKEY_PATCH},
        "LOCUST_ROLE": "ui",
        "LOCUST_WEB_HOST": "127.0.0.1",
        "LOCUST_WEB_PORT": str(port),
        "JOTC_TARGET": "http://127.0.0.1:9",
        "JOTC_LT_WEB_USERNAME": USERNAME,
        "JOTC_LT_WEB_PASSWORD": f"{PASSWORD}\n",  # as a Secret's value may end
    }
    base = f"http://127.0.0.1:{port}"
    server = start_server([JOTC_LOADTEST], env=env, log_path=tmp / "locust.log", ready_url=f"{base}/login", cwd=tmp)
    try:
        yield base
    finally:
        server.stop()


def send(
    base: str, method: str, path: str, form: dict[str, str] | None = None, cookie: str = ""
) -> tuple[int, str, str]:
    """(status, Location, the session cookie set) of one request, redirects not followed."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    headers = {"cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["content-type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        session = next((c.split(";")[0] for c in response.headers.get_all("set-cookie") or [] if "session=" in c), "")
        return response.status, response.headers.get("location", ""), session
    finally:
        connection.close()


def test_every_page_and_action_asks_for_the_login(ui: str) -> None:
    for method, path in [
        ("GET", "/"),
        ("POST", "/swarm"),
        ("POST", "/stop"),
        ("GET", "/stats/requests"),
        ("GET", "/stats/report"),
        ("GET", "/logs"),
    ]:
        status, location, _ = send(ui, method, path, {} if method == "POST" else None)
        assert status == 302, f"{method} {path}: {status}"
        assert urllib.parse.urlsplit(location).path == "/login", f"{method} {path} went to {location}"


@pytest.mark.parametrize(
    ("username", "password"),
    [(USERNAME, PASSWORD[:-1]), (USERNAME, PASSWORD + "x"), ("someone", PASSWORD), (USERNAME, ""), ("", "")],
)
def test_a_wrong_login_is_refused(ui: str, username: str, password: str) -> None:
    status, location, session = send(ui, "POST", "/login_submit", {"username": username, "password": password})
    assert (status, urllib.parse.urlsplit(location).path) == (302, "/login")
    if session:  # the refusal's message travels in the session; the UI stays closed with it
        assert send(ui, "GET", "/", cookie=session)[0] == 302


def test_the_right_login_opens_the_ui(ui: str) -> None:
    status, location, session = send(ui, "POST", "/login_submit", {"username": USERNAME, "password": PASSWORD})
    assert (status, urllib.parse.urlsplit(location).path) == (302, "/"), location
    assert session, "no session cookie"
    assert send(ui, "GET", "/", cookie=session)[0] == 200
    assert send(ui, "GET", "/stats/requests", cookie=session)[0] == 200


def test_the_command_needs_both_halves_of_the_login(tmp_path: Path) -> None:
    env = {**os.environ, "LOCUST_ROLE": "ui", "JOTC_LT_WEB_USERNAME": USERNAME, "JOTC_LT_WEB_PASSWORD": ""}
    result = subprocess.run(
        [JOTC_LOADTEST], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "jotc-loadtest: the web UI's login needs both JOTC_LT_WEB_USERNAME and JOTC_LT_WEB_PASSWORD; "
        "set the missing one (or neither, for a UI without a login)"
    ), result.stderr
