"""Rate limiting and Idempotency-Key in process against real Redis: replays, refusals, the user's index
of keys and its bound, and the walk after an erasure. Across processes, in flight and during an
outage: tests/system/test_redis_outage.py; erasure through the real server:
tests/system/test_idempotency_and_erasure.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial

import httpx
import psycopg
import pytest
import redis
from jotc_provision import free_port, wait_until
from sqlalchemy.ext.asyncio import create_async_engine
from support import fake_client, in_process, mid_window, plant, redis_url

from jotc_api import settings
from jotc_api.erasure import recorded_ids
from jotc_api.idempotency import ERASED, IDEMPOTENCY_TTL_SECONDS, WALK_CHUNK, IdempotencyStore, StoredReply
from jotc_api.redis_link import RedisLink

Connection = psycopg.Connection[tuple[object, ...]]
BODY = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "idem@example.com"}


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


def test_refusals_are_not_kept_so_a_corrected_request_may_use_the_key(client: httpx.Client) -> None:
    name = f"bad-{uuid.uuid4()}"
    key = {"idempotency-key": name}
    first = client.post("/jumps", json={"clouds": [0, 2]}, headers=key)
    again = client.post("/jumps", json={"clouds": [0, 2]}, headers=key)
    assert first.status_code == again.status_code == 422
    assert again.json() == first.json(), "the same refusal, computed afresh"
    assert "idempotent-replayed" not in again.headers
    assert redis_client().exists(IdempotencyStore.redis_key(name)) == 0, "nothing is kept of a refusal"
    corrected = client.post("/jumps", json=BODY, headers=key)
    assert corrected.status_code == 201
    assert client.post("/jumps", json=BODY, headers=key).headers["idempotent-replayed"] == "true"


def test_key_is_kept_for_24_hours(client: httpx.Client) -> None:
    name = f"ttl-{uuid.uuid4()}"
    assert client.post("/jumps", json=BODY, headers={"idempotency-key": name}).status_code == 201
    store = redis_client()
    ttl = store.ttl("jotc:idem:" + hashlib.sha256(name.encode()).hexdigest())
    store.close()
    assert 86_000 < ttl <= 86_400


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


def store_on_redis(
    ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS, clock: Callable[[], float] = time.time
) -> IdempotencyStore:
    return IdempotencyStore(RedisLink(redis_url()), ttl_seconds=ttl_seconds, clock=clock)


async def test_the_users_index_holds_only_the_keys_alive() -> None:
    """The bound docs/reliability.md states: the index of a user's keys never lists more than the
    keys alive at that user's last write. Keys that live 3 s stand in for a day's; one key that
    lives a minute keeps the index itself alive meanwhile. The index's clock stands still until the
    last write, so however slowly the machine writes, no entry leaves before that write."""
    now = [time.time()]
    short = store_on_redis(ttl_seconds=3, clock=lambda: now[0])
    lasting = store_on_redis(ttl_seconds=60, clock=lambda: now[0])
    user = f"busy-{uuid.uuid4()}"
    index = short.user_index(user)
    names = [f"short-{uuid.uuid4()}" for _ in range(300)]
    peek = redis_client()
    try:
        for name in names:
            await short.keep(name, StoredReply("fp", True, record=str(uuid.uuid4())), owner=user)
        await lasting.keep("lasting", StoredReply("fp", True, record=str(uuid.uuid4())), owner=user)
        keys = [short.redis_key(name) for name in names]
        await asyncio.to_thread(
            wait_until, lambda: peek.exists(*keys) == 0, timeout=30, what="the keys to expire", interval=0.1
        )
        assert peek.zcard(index) == 301, "expired keys leave the index at the user's next write"
        now[0] = time.time()
        await lasting.keep("the-live-one", StoredReply("fp", True, record=str(uuid.uuid4())), owner=user)
        assert set(peek.zrange(index, 0, -1)) == {short.redis_key(k).encode() for k in ("lasting", "the-live-one")}
        assert 0 < peek.ttl(index) <= 60, "the index goes with the last key it lists"
    finally:
        peek.delete(index, *(short.redis_key(name) for name in [*names, "lasting", "the-live-one"]))
        peek.close()
        await short.link.close()
        await lasting.link.close()


async def test_the_walk_after_an_erasure_turns_only_the_keys_of_deleted_requests(database_url: str) -> None:
    """Real Redis, real PostgreSQL: a user with more keys than one chunk of the walk, half of whose
    requests are then deleted, and keys left in the previous release's index (a plain set)."""
    store = store_on_redis()
    user = f"walked-{uuid.uuid4()}@example.com"
    plant(database_url, user, WALK_CHUNK + 100)
    with psycopg.connect(database_url, autocommit=True) as db:
        ids = [str(row[0]) for row in db.execute("SELECT id FROM jump_requests WHERE user_name = %s", (user,))]
        names = {record: f"walked-{uuid.uuid4()}" for record in ids}
        for record, name in names.items():
            await store.keep(name, StoredReply("fp", True, record=record), owner=user)
        peek = redis_client()
        legacy = [ids[0], ids[1]]  # as the previous release listed them
        peek.zrem(store.user_index(user), *(store.redis_key(names[record]) for record in legacy))
        peek.sadd(store.legacy_index(user), *(store.redis_key(names[record]) for record in legacy))
        erased = set(ids[::2])  # ids[0] among them, ids[1] not
        db.execute("DELETE FROM jump_requests WHERE id = ANY(%s)", ([uuid.UUID(i) for i in erased],))
    engine = create_async_engine(settings.database_url({"DATABASE_URL": database_url}))
    try:
        turned = await store.forget_erased(user, partial(recorded_ids, engine))
    finally:
        await engine.dispose()
    try:
        assert turned == len(erased)
        for record, name in names.items():
            kept = store.decoder.decode(peek.get(store.redis_key(name)))
            assert (kept.fingerprint == ERASED) == (record in erased), record
        survivors = {store.redis_key(names[r]).encode() for r in ids if r not in erased and r not in legacy}
        assert set(peek.zrange(store.user_index(user), 0, -1)) == survivors
        assert peek.smembers(store.legacy_index(user)) == {store.redis_key(names[ids[1]]).encode()}
    finally:
        peek.delete(store.user_index(user), store.legacy_index(user), *(store.redis_key(n) for n in names.values()))
        peek.close()
        await store.link.close()


async def test_an_index_left_by_the_previous_release_breaks_no_write() -> None:
    store = store_on_redis()
    user = f"upgraded-{uuid.uuid4()}"
    peek = redis_client()
    try:
        peek.sadd(store.legacy_index(user), "jotc:idem:left-by-the-previous-release")
        await store.keep("after-the-upgrade", StoredReply("fp", True, record=str(uuid.uuid4())), owner=user)
        assert store.link.healthy
        assert peek.type(store.user_index(user)) == b"zset"
        assert peek.zcard(store.user_index(user)) == 1
    finally:
        peek.delete(store.user_index(user), store.legacy_index(user), store.redis_key("after-the-upgrade"))
        peek.close()
        await store.link.close()


def test_kept_values_have_a_fixed_size_whatever_the_input(client: httpx.Client) -> None:
    """The bound docs/reliability.md states for a kept value: a success of either route, any input."""
    peek = redis_client()
    sizes = {}
    for route, body in [("/jumps", {"clouds": "0" * 5000, "user": "u" * 320}), ("/jotc", {"clouds": [0, 0]})]:
        name = f"size-{uuid.uuid4()}"
        assert client.post(route, json=body, headers={"idempotency-key": name}).status_code in {200, 201}
        sizes[route] = peek.strlen(IdempotencyStore.redis_key(name))
    peek.close()
    assert sizes == {"/jumps": KEPT_VALUE_BYTES, "/jotc": KEPT_VALUE_BYTES}


KEPT_VALUE_BYTES = 130  # a fingerprint and a record's id; docs/reliability.md


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
