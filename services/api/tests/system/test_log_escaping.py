"""Control characters a client puts in a request's path never reach the real server's log raw, in
either format. Granian percent-decodes the path (`%1B` is an escape character, `%00` a NUL, both
in scope["path"]); a raw control byte in the request line is refused by Granian itself (400)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jotc_provision import wait_until
from support import ApiServer, start_api

# Escape (recolouring the terminal), backspace, NUL; a C1 control (CSI) and a right-to-left
# override, which JSON may carry unescaped.
HOSTILE_PATH = "/jumps/%1B[31m%08%00x%C2%9B%E2%80%AEy"
DECODED = "/jumps/\x1b[31m\x08\x00x\x9b\u202ey"
RAW = [b"\x1b", b"\x08", b"\x00", "\x9b".encode(), "\u202e".encode()]


def get_raw(server: ApiServer, target: str, request_id: str) -> bytes:
    """The status line of GET target, sent byte for byte (an HTTP client would re-encode it)."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: {request_id}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def logged_line(server: ApiServer, request_id: str) -> bytes:
    """The log line that carries request_id, as bytes: what a terminal showing the log receives."""

    def found() -> list[bytes]:
        return [line for line in server.log_path.read_bytes().splitlines() if request_id.encode() in line]

    lines = wait_until(found, timeout=10, what=f"the access line of {request_id}")
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def console_api(database_url: str, tmp_root: Path) -> Iterator[ApiServer]:
    """The real server with console logs, as scripts/dev runs it."""
    server = start_api(database_url, tmp_root, JOTC_WORKERS="1", LOG_FORMAT="console")
    yield server
    server.stop()


def test_console_lines_escape_control_characters(console_api: ApiServer) -> None:
    request_id = f"console-{uuid.uuid4().hex[:12]}"
    assert get_raw(console_api, HOSTILE_PATH, request_id) == b"HTTP/1.1 404 Not Found"
    line = logged_line(console_api, request_id)
    assert not [raw for raw in RAW if raw in line], line
    assert rb"path=/jumps/\x1b[31m\x08\x00x\x9b\u202ey" in line, line


def test_json_lines_escape_control_characters(api: ApiServer) -> None:
    request_id = f"json-{uuid.uuid4().hex[:12]}"
    assert get_raw(api, HOSTILE_PATH, request_id) == b"HTTP/1.1 404 Not Found"
    line = logged_line(api, request_id)
    assert not [raw for raw in RAW if raw in line], line
    assert json.loads(line)["path"] == DECODED, "JSON's own escapes: the path reads back as it came"
