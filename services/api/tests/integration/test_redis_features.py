"""Rate limiting and Idempotency-Key in process against real Redis. Across processes, in flight and
during an outage: tests/system/test_redis_outage.py."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable

import httpx
import psycopg
import pytest
import redis
from jotc_provision import free_port
from support import fake_client, in_process

Connection = psycopg.Connection[tuple[object, ...]]
BODY = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "idem@example.com"}


def mid_window(period: int = 3600) -> Callable[[], float]:
    """A clock stopped in the middle of the current fixed window: a counting test never straddles
    a window's edge (tests/unit/test_ratelimit.py covers the edges)."""
    now = (time.time() // period) * period + period / 2
    return lambda: now


def test_rate_limit_answers_429_with_headers_after_the_budget(database_url: str) -> None:
    limited_app = in_process(
        database_url, peer="127.0.0.1", clock=mid_window(), JOTC_RATE_LIMIT="20/hour", JOTC_TRUSTED_PROXIES="127.0.0.1"
    )
    client, other = fake_client(), fake_client()
    with limited_app as http:
        statuses = [
            http.post("/jumps", json={"clouds": [0, 0]}, headers={"x-forwarded-for": client}).status_code
            for _ in range(25)
        ]
        assert statuses == [201] * 20 + [429] * 5
        limited = http.post("/jumps", json={"clouds": [0, 0]}, headers={"x-forwarded-for": client})
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert limited.json()["type"].endswith("/rate-limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 3600
        assert limited.headers["ratelimit-limit"] == "20"
        assert limited.headers["ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["ratelimit-reset"]) <= 3600
        assert http.get("/jumps/" + str(uuid.uuid4()), headers={"x-forwarded-for": client}).status_code == 429
        # Another address has its own budget; probes and scrapes are never limited.
        assert http.post("/jumps", json={"clouds": [0, 0]}, headers={"x-forwarded-for": other}).status_code == 201
        for path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(path, headers={"x-forwarded-for": client}).status_code == 200


def test_forwarded_for_is_ignored_from_untrusted_peers(database_url: str) -> None:
    untrusting = in_process(
        database_url,
        peer="127.0.0.1",
        clock=mid_window(),
        JOTC_RATE_LIMIT="5/hour",
        JOTC_TRUSTED_PROXIES="10.0.0.0/8",
        REDIS_URL="",
    )
    with untrusting as http:
        statuses = [
            http.post("/jumps", json={"clouds": [0, 0]}, headers={"x-forwarded-for": fake_client()}).status_code
            for _ in range(7)
        ]
    assert statuses == [201] * 5 + [429] * 2  # every request counted against 127.0.0.1


def test_without_redis_limits_hold_per_worker(database_url: str) -> None:
    alone = in_process(
        database_url,
        peer="127.0.0.1",
        clock=mid_window(),
        JOTC_RATE_LIMIT="10/hour",
        JOTC_TRUSTED_PROXIES="127.0.0.1",
        REDIS_URL="",
    )
    client = fake_client()
    with alone as http:
        statuses = Counter(
            http.post("/jumps", json={"clouds": [0, 0]}, headers={"x-forwarded-for": client}).status_code
            for _ in range(15)
        )
    assert statuses == {201: 10, 429: 5}


def test_idempotent_repeat_replays_the_same_answer_and_records_once(client: httpx.Client, db: Connection) -> None:
    key = {"idempotency-key": f"order-{uuid.uuid4()}"}
    first = client.post("/jumps", json=BODY, headers=key)
    again = client.post("/jumps", json=BODY, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    rows = db.execute("SELECT count(*) FROM jump_requests WHERE id = %s", (first.json()["id"],)).fetchone()
    assert rows == (1,)
    also_text = client.post("/jumps", content=b"2\n0 0\n", headers={**key, "content-type": "text/plain"})
    assert also_text.json()["type"].endswith("/idempotency-key-reused")


def test_same_key_with_a_different_body_is_422(client: httpx.Client) -> None:
    key = {"idempotency-key": f"k-{uuid.uuid4()}"}
    assert client.post("/jumps", json=BODY, headers=key).status_code == 201
    other = client.post("/jumps", json={**BODY, "user": "someone-else"}, headers=key)
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency-key-reused")


def test_validation_errors_are_replayed_too(client: httpx.Client) -> None:
    key = {"idempotency-key": f"bad-{uuid.uuid4()}"}
    first = client.post("/jumps", json={"clouds": [0, 2]}, headers=key)
    again = client.post("/jumps", json={"clouds": [0, 2]}, headers=key)
    assert first.status_code == again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"


def test_key_is_kept_for_24_hours(client: httpx.Client) -> None:
    name = f"ttl-{uuid.uuid4()}"
    assert client.post("/jumps", json=BODY, headers={"idempotency-key": name}).status_code == 201
    store = redis.Redis.from_url(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    ttl = store.ttl("jotc:idem:" + hashlib.sha256(name.encode()).hexdigest())
    store.close()
    assert 86_000 < ttl <= 86_400


@pytest.mark.parametrize("key", [b"x" * 256, b"has space", b"tab\there", "\u00e9".encode()])
def test_malformed_keys_are_422(client: httpx.Client, key: bytes) -> None:
    response = client.post("/jumps", json=BODY, headers=[(b"idempotency-key", key)])
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


def test_unreachable_redis_from_the_start(database_url: str) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with in_process(database_url, REDIS_URL=nowhere, JOTC_RATE_LIMIT="1000/minute") as http:
        assert http.post("/jumps", json={"clouds": [0, 0]}).status_code == 201
        assert http.get("/readyz").status_code == 200
