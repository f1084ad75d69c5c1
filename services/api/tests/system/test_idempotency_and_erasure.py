"""Idempotency-Key and erasure on the real server (jotc-api, Granian): a key replays what it recorded
for as long as the record exists, a refusal keeps nothing under its key, a Redis outage's 503 names
Redis's role and never its address, and no user name reads or replaces another user's erasure
record. The index of a user's keys and its bound: tests/integration/test_redis_features.py."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from jotc_provision import RedisServer, wait_until
from support import AUTH, ApiServer, redis_url, start_api

from jotc_api.erasure import LOCK_CLASS
from jotc_api.idempotency import ERASED, IdempotencyStore
from jotc_api.redis_link import RedisLink

Connection = psycopg.Connection[tuple[object, ...]]
REFUSED = {"clouds": [0, 2]}  # 2 is not a cloud: 422 validation


def body_of(user: str) -> dict[str, Any]:
    return {"clouds": [0, 0, 1, 0], "user": user}


def kept_fingerprint(key: str) -> str | None:
    """What Redis holds under an Idempotency-Key: the fingerprint of its request, "erased" for a
    tombstone, None when nothing is kept."""
    peek = redis.Redis.from_url(redis_url())
    try:
        value = peek.get(IdempotencyStore.redis_key(key))
    finally:
        peek.close()
    return None if value is None else IdempotencyStore(RedisLink(None)).decoder.decode(value).fingerprint


def test_a_key_replays_what_it_recorded_for_as_long_as_the_record_exists(
    server_client: httpx.Client, database_url: str
) -> None:
    user = f"kept-{uuid.uuid4().hex[:8]}@example.com"
    erased_key, kept_key = f"before-{uuid.uuid4()}", f"after-{uuid.uuid4()}"
    before = server_client.post("/jumps", json=body_of(user), headers={"idempotency-key": erased_key})
    assert before.status_code == 201
    # Hold the erasure: its runner needs the user's advisory lock, which this session takes first.
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, user))
        asked = server_client.delete(f"/admin/users/{user}/requests", headers=AUTH)
        assert asked.status_code == 202, asked.text
        after = server_client.post("/jumps", json=body_of(user), headers={"idempotency-key": kept_key})
        assert after.status_code == 201  # recorded after the erasure was asked: the erasure keeps it
        holder.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, user))
    status = wait_until(
        lambda: (job := server_client.get(f"/admin/erasures/{user}", headers=AUTH).json())["state"] == "done" and job,
        timeout=60,
        what="the erasure finished in the background",
        interval=0.2,
    )
    assert status["deleted"] == 1
    wait_until(lambda: kept_fingerprint(erased_key) == ERASED, timeout=30, what="the erased request's key forgotten")

    gone = server_client.post("/jumps", json=body_of(user), headers={"idempotency-key": erased_key})
    assert gone.status_code == 410
    assert gone.json()["type"] == "/problems/erased"
    replay = server_client.post("/jumps", json=body_of(user), headers={"idempotency-key": kept_key})
    assert replay.status_code == 201, replay.text
    assert replay.json()["id"] == after.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert kept_fingerprint(kept_key) not in {None, ERASED}


def test_a_refusal_keeps_nothing_under_its_key(server_client: httpx.Client) -> None:
    key = {"idempotency-key": f"refused-{uuid.uuid4()}"}
    first = server_client.post("/jumps", json=REFUSED, headers=key)
    again = server_client.post("/jumps", json=REFUSED, headers=key)
    assert first.status_code == again.status_code == 422
    assert again.json() == first.json(), "the same refusal, computed afresh"
    assert "idempotent-replayed" not in again.headers
    assert kept_fingerprint(key["idempotency-key"]) is None
    corrected = server_client.post("/jumps", json=body_of("corrected@example.com"), headers=key)
    assert corrected.status_code == 201, corrected.text
    replay = server_client.post("/jumps", json=body_of("corrected@example.com"), headers=key)
    assert (replay.json()["id"], replay.headers["idempotent-replayed"]) == (corrected.json()["id"], "true")


def test_a_redis_outage_is_a_503_naming_redis_not_its_address(
    database_url: str, tmp_root: Path, private_redis: RedisServer
) -> None:
    server = start_api(database_url, tmp_root, REDIS_URL=private_redis.url, JOTC_WORKERS="1")
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            key = {"idempotency-key": f"outage-{uuid.uuid4()}"}
            assert http.post("/jumps", json=body_of("outage@example.com"), headers=key).status_code == 201
            private_redis.kill()
            # The first finds its connection closed; the next ones fail to connect.
            refusals = [http.post("/jumps", json=body_of("outage@example.com"), headers=key) for _ in range(3)]
        log = server.log()
    finally:
        server.stop()
    for refused in refusals:
        assert refused.status_code == 503
        assert refused.json()["type"] == "/problems/idempotency-unavailable"
        assert "Redis" in refused.json()["detail"]
        for leak in ("127.0.0.1", str(private_redis.port), "onnect", "rror"):
            assert leak not in refused.text, f"{leak!r} in {refused.text}"
    failures = [line for line in log.splitlines() if '"redis unavailable' in line]
    assert failures, f"what went wrong is in the log: {log}"
    assert '"error": "' in failures[0]


def test_no_user_name_reads_or_replaces_another_users_erasure_record(api: ApiServer) -> None:
    ada = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    alias = "sha256:" + hashlib.sha256(ada.encode()).hexdigest()  # a valid user name
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        assert http.post("/jumps", json=body_of(ada)).status_code == 201
        assert http.delete(f"/admin/users/{ada}/requests", headers=AUTH).json() == {"user": ada, "deleted": 1}
        record = http.get(f"/admin/erasures/{ada}", headers=AUTH).json()

        read_by_alias = http.get(f"/admin/erasures/{alias}", headers=AUTH)
        assert read_by_alias.status_code == 404, read_by_alias.text

        assert http.post("/jumps", json=body_of(alias)).status_code == 201
        erased = http.delete(f"/admin/users/{alias}/requests", headers=AUTH)
        assert erased.json() == {"user": alias, "deleted": 1}
        assert http.get(f"/admin/erasures/{ada}", headers=AUTH).json() == record
