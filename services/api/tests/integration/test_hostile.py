"""Hostile clients, in-process: inputs that used to reach a 500, names that hide text, ids with
several spellings, HEAD, erasure that must reach idempotency replays, admin pages bounded by size,
forged cursors, made-up methods, and rate-limit buckets that clients cannot multiply."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from jotc_provision import DEFAULT_REDIS_URL, wait_until
from support import in_process

from jotc_api.idempotency import IdempotencyStore
from jotc_api.ratelimit import RateLimiter
from jotc_api.redis_link import RedisLink
from jotc_api.routes.admin import make_cursor
from jotc_api.settings import RateLimit

TOKEN = "hostile-test-token-of-32-characters-or-more"  # pragma: allowlist secret
ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Any]:
    with in_process(database_url, JOTC_ADMIN_TOKEN=TOKEN, JOTC_MAX_CLOUDS="5000", JOTC_ADMIN_PAGE_CELLS="1000") as c:
        yield c


def problem_type(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return str(response.json()["type"])


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"clouds":[0,0],"user":"\xff\xfe"}', "application/json", 400),
        ('{"clouds":[0,0],"user":"\u00e9"}'.encode("latin-1"), "application/json; charset=latin-1", 415),
        (b'{"clouds":[0,0]}', "application/json; charset=utf-16", 415),
        (b'{"clouds":[0,0]}', "application/json; charset=UTF-8", 201),
        (b"2\n0 " + b"0" * 5000 + b"\n", "text/plain", 400),
        (b"2\n0 0\n", "text/plain; charset=us-ascii", 201),
        (b'{"clouds":[0,0]}', "application/json; charset=utf-8; charset=utf-16", 415),
    ],
)
def test_inputs_that_reached_a_500_are_answered_plainly(api: Any, body: bytes, content_type: str, status: int) -> None:
    response = api.post("/jumps", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    if status >= 400:
        problem_type(response)


@pytest.mark.parametrize(
    "user",
    [
        "evil\u202egnp.exe",
        "a\u2066b",
        "bell\x07",
        "new\nline",
        "esc\x1b[31m",
        "ls\u2028x",
        "ad\u200bmin",
        "\ufeffbom",
        "tag\U000e0041",
    ],
)
def test_names_that_hide_or_reorder_text_are_refused(api: Any, user: str) -> None:
    response = api.post("/jumps", json={"clouds": [0, 0], "user": user})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["user"]


def test_ordinary_unicode_names_are_kept(api: Any) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467 \u00e9l\u00e8ve"
    created = api.post("/jumps", json={"clouds": [0, 0], "user": family})
    assert created.status_code == 201
    assert api.get(created.headers["location"]).json()["user"] == family


def test_a_record_answers_under_one_spelling_of_its_id(api: Any) -> None:
    location = api.post("/jumps", json={"clouds": [0, 0]}).headers["location"]
    record_id = location.rsplit("/", 1)[1]
    assert api.get(location).status_code == 200
    for spelling in (record_id.upper(), f"{{{record_id}}}", f"urn:uuid:{record_id}", record_id.replace("-", "")):
        assert api.get(f"/jumps/{spelling}").status_code == 404, spelling


@pytest.mark.parametrize("path", ["/healthz", "/", "/schema/openapi.json", "/problems/validation"])
def test_head_is_get_without_a_body(api: Any, path: str) -> None:
    got = api.get(path)
    head = api.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_admin_answers_are_never_cached(api: Any) -> None:
    for path in ("/admin/stats", "/admin/requests"):
        assert api.get(path, headers=ADMIN).headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/admin/stats", make_cursor("stats:requests:desc", ["many", "ada"])),
        ("/admin/stats", make_cursor("stats:last_request_at:desc", [5, "ada"])),
        ("/admin/stats", make_cursor("stats:user:desc", [True, 5])),
        ("/admin/stats", make_cursor("stats:requests:desc", [2**63, "a"])),
        ("/admin/stats", make_cursor("stats:requests:desc", [1, "a\u0000b"])),
        ("/admin/stats", make_cursor("stats:user:asc", ["a\u0000", "b"])),
        ("/admin/requests", make_cursor("requests", [5, 6])),
        ("/admin/requests", make_cursor("requests", [{"a": 1}, None])),
        ("/admin/requests", make_cursor("requests", [])),
    ],
)
def test_forged_cursors_are_422_not_503(api: Any, path: str, cursor: str) -> None:
    response = api.get(path, params={"cursor": cursor}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["cursor"]


def test_admin_pages_are_bounded_by_clouds_not_only_rows(api: Any) -> None:
    """JOTC_ADMIN_PAGE_CELLS=1000: 600-cloud requests come one per page, a 1500-cloud one alone,
    and following the cursors lists each request exactly once."""
    user = "cells-bounded"
    made = [api.post("/jumps", json={"clouds": "0" * n, "user": user}).json()["id"] for n in (600, 1500, 600, 600)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"user": user, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = api.get("/admin/requests", params=params, headers=ADMIN).json()
        assert len(page["items"]) == 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


def test_a_finished_erasure_names_nobody(api: Any, database_url: str) -> None:
    user = "forget-my-name@example.com"
    assert api.post("/jumps", json={"clouds": [0, 0], "user": user}).status_code == 201
    assert api.delete(f"/admin/users/{user}/requests", headers=ADMIN).json()["deleted"] == 1
    status = api.get(f"/admin/erasures/{user}", headers=ADMIN)
    assert status.status_code == 200
    assert status.json()["state"] == "done"
    with psycopg.connect(database_url) as db:
        rows = db.execute("SELECT user_name FROM erasure_jobs").fetchall()
    assert all(user not in str(row) for row in rows)


def test_erasure_reaches_idempotency_replays(api: Any) -> None:
    user = "erase-my-keys@example.com"
    key = f"erasure-{time.time_ns()}"
    body = {"clouds": [0, 0, 1, 0], "user": user}
    first = api.post("/jumps", json=body, headers={"idempotency-key": key})
    assert first.status_code == 201
    replay = api.post("/jumps", json=body, headers={"idempotency-key": key})
    assert replay.status_code == 201
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert api.delete(f"/admin/users/{user}/requests", headers=ADMIN).json()["deleted"] == 1
    after = api.post("/jumps", json=body, headers={"idempotency-key": key})
    assert after.status_code == 410
    assert problem_type(after) == "/problems/erased"
    assert user not in after.text
    client = redis.Redis.from_url(DEFAULT_REDIS_URL)
    store = IdempotencyStore(RedisLink(None))
    # The key becomes a tombstone in the background, after the answer (the record is gone already).
    kept = wait_until(
        lambda: (value := client.get(store.redis_key(key))) == store.tombstone and value,
        timeout=10,
        what="the erased request's key turned into a tombstone",
    )
    assert b"erase-my-keys" not in kept
    assert store.decoder.decode(kept).fingerprint == "erased"
    assert client.exists(IdempotencyStore.user_index(user)) == 0


def test_kept_answers_are_small_whatever_the_input(api: Any) -> None:
    key = f"large-{time.time_ns()}"
    body = {"clouds": "0" * 5000, "user": "large-input"}
    first = api.post("/jumps", json=body, headers={"idempotency-key": key})
    assert first.status_code == 201
    assert len(first.content) > 10_000
    kept = redis.Redis.from_url(DEFAULT_REDIS_URL).get(IdempotencyStore.redis_key(key))
    assert kept is not None
    assert len(kept) < 400
    replay = api.post("/jumps", json=body, headers={"idempotency-key": key})
    assert replay.content == first.content


def test_made_up_methods_do_not_grow_the_metrics(api: Any) -> None:
    for index in range(40):
        assert api.request(f"X-MADE-UP-{index}", "/jumps").status_code in {400, 405}
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline and 'method="other"' not in text:
        time.sleep(0.1)
        text = api.get("/metrics").text
    assert 'method="other"' in text
    assert "MADE-UP" not in text


def limiter(*trusted: str, max_clients: int = 100) -> tuple[RateLimiter, list[float]]:
    import ipaddress

    now = [1_000_000.0]
    networks = [ipaddress.ip_network(network) for network in trusted]
    return RateLimiter(RateLimit(2, 60), RedisLink(None), networks, max_clients=max_clients, clock=lambda: now[0]), now


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", ["198.51.100.9", "203.0.113.5"], "203.0.113.5"),  # two header lines: one list
        ("127.0.0.1", ["1.1.1.1, 203.0.113.5"], "203.0.113.5"),  # what the client wrote is left of it
        ("127.0.0.1", ["203.0.113.5, not-an-ip"], "127.0.0.1"),  # garbage: trust stops at the proxy
        ("127.0.0.1", ["[2001:db8::1]:4711"], "2001:db8::/64"),
        ("127.0.0.1", ['"203.0.113.5:8080"'], "203.0.113.5"),
        ("198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # an untrusted peer's header is ignored
        ("::ffff:203.0.113.5", [], "203.0.113.5"),
        ("2001:db8:0:1::7", [], "2001:db8:0:1::/64"),
    ],
)
def test_the_client_behind_proxies_is_found_as_the_standard_says(peer: str, forwarded: list[str], client: str) -> None:
    rate, _ = limiter("127.0.0.1/32")
    assert rate.client_key(peer, forwarded) == client


async def test_made_up_addresses_share_bounded_buckets() -> None:
    rate, _ = limiter(max_clients=3)
    for index in range(50):
        rate.admit(rate.client_key(f"2001:db8::{index:x}", []))  # one /64: one bucket
    assert len(rate.windows) == 1
    assert rate.admit(rate.client_key("2001:db8::ffff", []))[0] is False
    for index in range(1, 200):
        rate.admit(rate.client_key(f"203.0.113.{index % 250}", []))
    assert len(rate.windows) <= 4  # three clients and the shared overflow bucket


async def test_windows_follow_the_injected_clock() -> None:
    rate, now = limiter()
    assert [rate.admit("203.0.113.5")[0] for _ in range(3)] == [True, True, False]
    now[0] += 60
    assert rate.admit("203.0.113.5")[0] is True


@pytest.mark.parametrize("path", ["/jumps/", "/jotc/"])
def test_other_spellings_of_the_write_routes_get_the_same_limits(api: Any, path: str) -> None:
    """Litestar routes "/jumps/" like "/jumps": the early 413 and the upload slots apply there too."""
    refused = api.post(path, content=b"{}", headers={"content-type": "application/json", "content-length": "99999999"})
    assert refused.status_code == 413


def test_percent_escapes_that_are_not_utf8_are_refused(api: Any) -> None:
    response = api.post("/jumps?user=%FF%FE", content=b"2\n0 0\n", headers={"content-type": "text/plain"})
    assert response.status_code == 400


def test_a_refusal_keeps_nothing_under_its_key(api: Any) -> None:
    key = f"huge-refusal-{time.time_ns()}"
    body = b'{"clouds":"00","' + b"x" * 20_000 + b'":1}'
    refused = api.post("/jumps", content=body, headers={"content-type": "application/json", "idempotency-key": key})
    assert refused.status_code == 422
    assert len(refused.content) < 4096
    assert redis.Redis.from_url(DEFAULT_REDIS_URL).get(IdempotencyStore.redis_key(key)) is None


def test_an_ipv4_proxy_seen_through_a_dual_stack_listener_is_trusted() -> None:
    rate, _ = limiter("127.0.0.1/32")
    assert rate.client_key("::ffff:127.0.0.1", ["203.0.113.5"]) == "203.0.113.5"


def test_metrics_say_their_charset_once(api: Any) -> None:
    assert api.get("/metrics").headers["content-type"].count("charset") == 1


def test_a_nul_in_a_path_is_a_404_not_a_500(api: Any) -> None:
    for path in ("/schema/swagger-ui/%00", "/schema/swagger-ui/swagger-ui.css%00.png", "/jumps/%00"):
        assert api.get(path).status_code == 404, path


def test_admin_refusals_are_never_cached_either(api: Any) -> None:
    refused = api.get("/admin/stats")
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"
    assert api.get("/admin/stats", params={"limit": "0"}, headers=ADMIN).headers["cache-control"] == "no-store"
    assert api.get("/admin/stats", headers=ADMIN).headers.get_list("cache-control") == ["no-store"]


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_compressed_bodies_are_refused_not_misread(api: Any, encoding: str) -> None:
    response = api.post(
        "/jumps",
        content=b'{"clouds":[0,0]}',
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert response.status_code == 415
    assert problem_type(response) == "/problems/unsupported-media-type"


def test_identity_encoding_is_accepted(api: Any) -> None:
    response = api.post(
        "/jumps",
        content=b'{"clouds":[0,0]}',
        headers={"content-type": "application/json", "content-encoding": "identity"},
    )
    assert response.status_code == 201
