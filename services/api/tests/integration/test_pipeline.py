"""Every answer leaves through one pipeline: CORS as configured, a request id, security headers,
and problem+json even for a crash, whichever layer produced the answer (fast path, rate limiter,
Litestar's routes and errors)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import in_process

from jotc_api import jumps

ORIGIN = "https://app.example.com"
TOKEN = "pipeline-test-token-of-32-characters-or-more"  # pragma: allowlist secret


@pytest.fixture(scope="module")
def browser(database_url: str) -> Iterator[Any]:
    settings = {
        "JOTC_CORS_ORIGINS": ORIGIN,
        "JOTC_ADMIN_TOKEN": TOKEN,
        "JOTC_MAX_BODY_BYTES": "4096",
        "JOTC_MAX_CLOUDS": "1000",
    }
    with in_process(database_url, **settings) as client:
        client.headers["origin"] = ORIGIN
        yield client


ADMIN = {"authorization": f"Bearer {TOKEN}"}
ANSWERS: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/jumps", {"json": {"clouds": [0, 0, 1, 0]}}, 201),
    ("POST", "/jumps", {"content": b"4\n0 0 1 0\n", "headers": {"content-type": "text/plain"}}, 201),
    ("POST", "/jumps", {"json": {"clouds": [0, 2, 0]}}, 422),
    ("POST", "/jumps", {"json": {"clouds": [0, 1, 1, 0]}}, 422),
    ("POST", "/jumps", {"content": b"{", "headers": {"content-type": "application/json"}}, 400),
    ("POST", "/jumps", {"content": b"<x/>", "headers": {"content-type": "application/xml"}}, 415),
    ("POST", "/jumps", {"content": b"0" * 5000, "headers": {"content-type": "application/json"}}, 413),
    ("POST", "/jotc", {"json": {"clouds": "0010010"}}, 200),
    ("POST", "/jotc", {"content": b"2\n0 0\n", "headers": {"content-type": "text/plain"}}, 415),
    ("POST", "/jumps", {"json": {"clouds": [0, 0]}, "headers": {"idempotency-key": "\x01"}}, 422),
    ("GET", "/jumps/not-a-uuid", {}, 404),
    ("GET", "/nowhere", {}, 404),
    ("PUT", "/jumps", {}, 405),
    ("GET", "/", {}, 200),
    ("GET", "/healthz", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/schema/openapi.json", {}, 200),
    ("GET", "/problems/validation", {}, 200),
    ("GET", "/admin/stats", {}, 401),
    ("GET", "/admin/stats", {"headers": ADMIN}, 200),
    ("GET", "/admin/stats?limit=0", {"headers": ADMIN}, 422),
    ("GET", "/admin/requests?sortt=x", {"headers": ADMIN}, 422),
    ("DELETE", "/admin/users/nobody/requests", {"headers": ADMIN}, 200),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"), ANSWERS, ids=[f"{a[0]} {a[1]} {a[3]}" for a in ANSWERS]
)
def test_a_browser_on_an_allowed_origin_can_read_every_answer(
    browser: Any, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = browser.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Location" in response.headers["access-control-expose-headers"]
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    if (status >= 400 and path != "/nowhere") or status == 404:
        assert response.headers["content-type"].startswith("application/problem+json")


def test_other_origins_get_no_cors_grant(browser: Any) -> None:
    response = browser.post("/jumps", json={"clouds": [0, 0]}, headers={"origin": "https://evil.example"})
    assert response.status_code == 201
    assert "access-control-allow-origin" not in response.headers


def test_a_preflight_allows_the_headers_a_browser_asks_for(browser: Any) -> None:
    response = browser.options(
        "/jumps",
        headers={
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,idempotency-key",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "content-type,idempotency-key"
    assert response.headers["vary"] == "Origin"


def test_a_preflight_from_another_origin_is_refused(browser: Any) -> None:
    response = browser.options(
        "/jumps", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_rate_limited_answers_carry_cors_and_their_headers(database_url: str) -> None:
    with in_process(database_url, JOTC_CORS_ORIGINS=ORIGIN, JOTC_RATE_LIMIT="1/hour") as client:
        client.headers["origin"] = ORIGIN
        assert client.post("/jumps", json={"clouds": [0, 0]}).status_code == 201
        refused = client.post("/jumps", json={"clouds": [0, 0]})
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert refused.headers["retry-after"]
    assert refused.headers["ratelimit-limit"] == "1"
    assert refused.json()["type"] == "/problems/rate-limited"


@pytest.mark.parametrize("path", ["/jumps", "/jotc"])
def test_a_crash_is_a_problem_json_500_with_request_id_and_cors(
    browser: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(jumps, "solve_and_record", broken)
    response = browser.post(path, json={"clouds": [0, 0]}, headers={"x-request-id": "trace-me-42"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "/problems/internal"
    assert response.headers["x-request-id"] == "trace-me-42"
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_a_crash_inside_litestar_is_a_problem_json_500(browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("jotc_api.routes.jumps.read_jump", broken)
    response = browser.get("/jumps/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 500
    assert response.json()["type"] == "/problems/internal"
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_vary_origin_is_on_every_answer_when_cors_is_configured(browser: Any) -> None:
    """A shared cache must not hand an answer made for no origin (or another) to an allowed one."""
    assert browser.get("/healthz", headers={"origin": ""}).headers["vary"] == "Origin"
    assert browser.get("/healthz", headers={"origin": "https://evil.example"}).headers["vary"] == "Origin"
