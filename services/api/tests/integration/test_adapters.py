"""The fast path and Litestar's own routing of POST /jumps and /jotc answer alike.

Production traffic reaches the fast path, whose table is derived from the
Litestar declarations; an app built with ``fast_path=False`` lets Litestar
route the same declarations. Both call the declared serve functions, and this
keeps the two transports from drifting apart.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from support import POOLER_SETTINGS

from jotc_api.app import create_app
from jotc_api.settings import load_settings

CASES: list[tuple[str, dict[str, Any]]] = [
    ("/jumps", {"json": {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "twin"}}),
    ("/jumps", {"content": b"7\n0 0 1 0 0 1 0\n", "headers": {"content-type": "text/plain"}}),
    ("/jumps", {"json": {"clouds": [0, 2, 0]}}),
    ("/jumps", {"json": {"clouds": [0, 1, 1, 0]}}),
    ("/jumps", {"content": b"{", "headers": {"content-type": "application/json"}}),
    ("/jumps", {"content": b"x", "headers": {"content-type": "application/xml"}}),
    (
        "/jumps",
        {"content": b'{"clouds":"' + b"0" * 70_000 + b'"}', "headers": {"content-type": "application/json"}},
    ),
    ("/jotc", {"json": {"clouds": "0010010"}}),
    ("/jotc", {"json": {"clouds": [0, 0], "max_jump": 2}}),
]


def comparable(response: Any) -> tuple[int, str, Any]:
    kind = response.headers.get("content-type", "").split(";")[0]
    if "json" in kind:
        body = response.json()
        if isinstance(body, dict):
            body.pop("id", None)
    else:
        body = response.text
    return response.status_code, kind, body


@pytest.fixture(scope="module")
def litestar_client(database_url: str) -> Any:
    settings = load_settings(
        {"DATABASE_URL": database_url, **POOLER_SETTINGS, "JOTC_MAX_CLOUDS": "5000", "JOTC_MAX_BODY_BYTES": "65536"}
    )
    with TestClient(app=create_app(settings, configure_logs=False, fast_path=False)) as client:
        yield client


@pytest.mark.parametrize(("path", "request_args"), CASES)
def test_hot_path_and_litestar_handler_answer_alike(
    client: httpx.Client, litestar_client: Any, path: str, request_args: dict[str, Any]
) -> None:
    assert comparable(client.post(path, **request_args)) == comparable(litestar_client.post(path, **request_args))
