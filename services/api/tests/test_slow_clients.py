"""Slow and oversized clients are stopped by the server's limits, and others keep being served."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import ApiServer, start_api


@pytest.fixture(scope="module")
def strict_api(database_url: str, tmp_root: Path) -> ApiServer:
    server = start_api(
        database_url,
        tmp_root,
        JOTC_WORKERS="1",
        JOTC_HEADER_READ_TIMEOUT="2",
        JOTC_MAX_HEADER_BYTES="16384",
        JOTC_MAX_BODY_BYTES="2000000",
    )
    yield server  # type: ignore[misc]
    server.stop()


def port_of(server: ApiServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def test_a_client_that_never_finishes_its_headers_is_cut_off(strict_api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(strict_api)), timeout=10) as slow:
        slow.sendall(b"POST /jumps HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        # Meanwhile other clients are served.
        assert httpx.post(f"{strict_api.base_url}/jumps", json={"clouds": [0, 0]}).status_code == 201
        try:
            while slow.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
        waited = time.monotonic() - started
    assert waited < 9, f"the slow connection was held for {waited:.1f} s"


def test_oversized_headers_are_refused(strict_api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(strict_api)), timeout=10) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        try:
            answer = client.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:80]
    assert httpx.get(f"{strict_api.base_url}/healthz").status_code == 200


def test_large_bodies_still_stream_past_the_header_buffer(strict_api: ApiServer) -> None:
    clouds = "0" * 1_000_000
    response = httpx.post(f"{strict_api.base_url}/jumps", json={"clouds": clouds[:5000]}, timeout=30)
    assert response.status_code == 201
    big = httpx.post(
        f"{strict_api.base_url}/jumps",
        content=b'{"clouds": "' + clouds.encode() + b'"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert big.status_code == 422  # parsed in full (1 MB body, 16 KiB header buffer): over JOTC_MAX_CLOUDS
    assert big.json()["errors"][0]["field"] == "clouds"
