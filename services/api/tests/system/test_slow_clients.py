"""Slow, oversized and malformed clients are stopped by the server's limits, and others keep being
served: headers and bodies that trickle, oversized headers, HTTP/2 cleartext, broken chunked
framing, raw UTF-8 in a query, and clients that hang up mid-upload (a body framed by
Transfer-Encoding at all is refused: test_bounded_pods.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from jotc_provision import wait_until
from support import ApiServer, start_api

from jotc_api.settings import DEFAULT

HEADER_READ_TIMEOUT = 2
# Long enough that what must happen while uploads are stuck (other requests answered, the uploads
# past the slots refused) happens seconds before the stuck ones are cut off, however busy the machine.
BODY_READ_TIMEOUT = 3
# How long a test waits for the server to cut a client off: only a timeout not applied reaches it.
CUT_OFF_WITHIN = 30


def cut_off_bound(asked: float, name: str) -> float:
    """Halfway between the timeout asked for and the default a server that ignored it would use:
    a timer seconds late on a busy machine stays under it, that defect does not."""
    return (asked + DEFAULT[name]) / 2


@pytest.fixture(scope="module")
def strict_api(database_url: str, tmp_root: Path) -> ApiServer:
    server = start_api(
        database_url,
        tmp_root,
        JOTC_WORKERS="1",
        JOTC_HEADER_READ_TIMEOUT=str(HEADER_READ_TIMEOUT),
        JOTC_MAX_HEADER_BYTES="16384",
        JOTC_MAX_BODY_BYTES="2000000",
        JOTC_BODY_READ_TIMEOUT=str(BODY_READ_TIMEOUT),
        JOTC_MAX_UPLOADS="4",
        JOTC_UPLOAD_SHARE_PERCENT="100",  # every stuck upload here comes from one address
        JOTC_BODY_MIN_RATE="0",  # the timeout under test, not the minimum rate (test_bounded_pods.py)
    )
    yield server  # type: ignore[misc]
    server.stop()


def port_of(server: ApiServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def test_a_client_that_never_finishes_its_headers_is_cut_off(strict_api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(strict_api)), timeout=CUT_OFF_WITHIN) as slow:
        started = time.monotonic()
        slow.sendall(b"POST /jumps HTTP/1.1\r\nHost: x\r\n")
        # Meanwhile other clients are served.
        assert httpx.post(f"{strict_api.base_url}/jumps", json={"clouds": [0, 0]}).status_code == 201
        assert closed_by_server(slow), f"the slow connection was still open after {CUT_OFF_WITHIN} s"
        waited = time.monotonic() - started
    bound = cut_off_bound(HEADER_READ_TIMEOUT, "header_read_timeout")
    assert waited < bound, f"the slow connection was held for {waited:.1f} s (JOTC_HEADER_READ_TIMEOUT=2)"


def closed_by_server(client: socket.socket) -> bool:
    """Read until the server closes the connection (True) or the socket's timeout passes (False)."""
    try:
        while client.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def answered_yet(client: socket.socket) -> bool:
    """Has the server answered, or closed, this connection (without waiting or reading)?"""
    timeout = client.gettimeout()
    client.setblocking(False)  # with a timeout, Python would wait for the socket to become readable
    try:
        client.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    finally:
        client.settimeout(timeout)
    return True


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


def raw_exchange(server: ApiServer, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=timeout) as client:
        client.sendall(request)
        try:
            while chunk := client.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1]:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def test_one_connection_carries_requests_in_turn_pipelined_and_with_split_bodies(strict_api: ApiServer) -> None:
    """The served routes stop reading at Content-Length (transport.read_body) instead of waiting
    for the server's closing message: the connection must still be reused for what follows."""
    body = b'{"clouds": [0, 0, 1, 0]}'
    request = b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with socket.create_connection(("127.0.0.1", port_of(strict_api)), timeout=10) as client:
        answers = client.makefile("rb")
        for _ in range(3):
            client.sendall(request)
            assert read_answer(answers)[0] == 201
        client.sendall(request * 3)  # pipelined
        assert [read_answer(answers)[0] for _ in range(3)] == [201, 201, 201]
        client.sendall(request[:-5])  # the body's last bytes come later
        time.sleep(0.2)
        client.sendall(request[-5:])
        status, recorded = read_answer(answers)
        assert (status, recorded["n"]) == (201, 4)


def read_answer(answers: BinaryIO) -> tuple[int, Any]:
    """One HTTP/1.1 answer from a keep-alive connection's reader: its status and JSON body."""
    status_line = answers.readline()
    assert status_line, "the server closed the connection"
    length = 0
    while (line := answers.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(status_line.split()[1]), json.loads(answers.read(length))


def slow_upload(server: ApiServer) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port_of(server)), timeout=CUT_OFF_WITHIN)
    client.sendall(b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    return client


def test_bodies_that_trickle_are_cut_off_and_health_stays_answerable(strict_api: ApiServer) -> None:
    """JOTC_MAX_UPLOADS=4, JOTC_BODY_READ_TIMEOUT=3: ten stuck uploads take four upload slots,
    the other six are refused (503), the four get 408 and their connections close, and /healthz
    answers while they are still stuck."""
    started = time.monotonic()
    stuck = [slow_upload(strict_api) for _ in range(10)]
    try:
        assert httpx.get(f"{strict_api.base_url}/healthz", timeout=CUT_OFF_WITHIN).status_code == 200
        answered_before_health = [answered_yet(client) for client in stuck]
        answers = []
        for client in stuck:
            data = b""
            try:
                while chunk := client.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                data = b"(nothing within %d s)" % CUT_OFF_WITHIN
            answers.append(data)
        waited = time.monotonic() - started
    finally:
        for client in stuck:
            client.close()
    statuses = sorted(answer.split(b" ", 2)[1].decode() for answer in answers)
    assert statuses == ["408"] * 4 + ["503"] * 6, answers
    assert all(b"connection: close" in answer.lower() for answer in answers)
    held = [early for early, answer in zip(answered_before_health, answers, strict=True) if b" 408 " in answer[:13]]
    assert not any(held), "/healthz was answered only once stuck uploads were cut off"
    bound = cut_off_bound(BODY_READ_TIMEOUT, "body_read_timeout")
    assert waited < bound, f"stuck uploads were held for {waited:.1f} s (JOTC_BODY_READ_TIMEOUT=3)"
    assert httpx.post(f"{strict_api.base_url}/jumps", json={"clouds": [0, 0]}).status_code == 201


def test_http2_cleartext_is_not_spoken(strict_api: ApiServer) -> None:
    """HTTP/2 would bypass the HTTP/1 limits above: a prior-knowledge h2c preface gets no HTTP/2."""
    answer = raw_exchange(strict_api, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9), timeout=5)
    assert answer[3:4] != b"\x04", "the server answered with an HTTP/2 SETTINGS frame"
    upgrade = raw_exchange(
        strict_api,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    assert upgrade.startswith(b"HTTP/1.1 200"), upgrade[:100]


def test_broken_chunked_framing_is_a_client_error(strict_api: ApiServer) -> None:
    answer = raw_exchange(
        strict_api,
        b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert httpx.get(f"{strict_api.base_url}/healthz").status_code == 200


def test_raw_utf8_in_a_text_plain_query_is_kept_as_written(strict_api: ApiServer) -> None:
    body = b"2\n0 0\n"
    answer = raw_exchange(
        strict_api,
        b"POST /jumps?user=\xc3\xa9l\xc3\xa8ve HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    )
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    location = next(line.split(b": ", 1)[1] for line in answer.split(b"\r\n") if line.lower().startswith(b"location"))
    assert httpx.get(f"{strict_api.base_url}{location.decode()}").json()["user"] == "\u00e9l\u00e8ve"
    broken = raw_exchange(
        strict_api,
        b"POST /jumps?user=\xff HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    )
    assert broken.startswith(b"HTTP/1.1 400"), broken[:200]


def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error(strict_api: ApiServer) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port_of(strict_api)), timeout=5) as client:
            client.sendall(
                b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )

    def counted_499() -> list[str] | None:
        """The /jumps request counts in /metrics, once a 499 is among them."""
        text = httpx.get(f"{strict_api.base_url}/metrics").text
        lines = [
            line
            for line in text.splitlines()
            if line.startswith("jotc_http_requests_total") and 'route="/jumps"' in line
        ]
        return lines if any('status="499"' in line for line in lines) else None

    # The workers hand their counts to /metrics once a second: wait for the 499s to show.
    lines = wait_until(counted_499, timeout=10, what="the hung-up uploads counted as 499 in /metrics", interval=0.05)
    assert any('status="499"' in line for line in lines), f"no 499 among the /jumps counts: {lines}"
    assert not any('status="500"' in line for line in lines), f"a hung-up upload was counted as a 500: {lines}"


def test_the_server_does_not_announce_itself(strict_api: ApiServer) -> None:
    assert httpx.get(f"{strict_api.base_url}/healthz").headers.get("server", "") == ""


@pytest.mark.parametrize("path", [b"/jumps", b"/jumps/", b"//jumps"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Type: text/plain\r\nContent-Type: application/json\r\n", b"400"),
        (b"Content-Type: application/json\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n", b"422"),
    ],
)
def test_repeated_single_valued_headers_are_refused_on_every_spelling(
    strict_api: ApiServer, path: bytes, headers: bytes, status: bytes
) -> None:
    body = b'{"clouds":[0,0]}'
    answer = raw_exchange(
        strict_api,
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: 16\r\n\r\n" + body,
    )
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]
