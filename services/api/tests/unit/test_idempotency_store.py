"""Idempotency keys against a fake Redis: claiming, keeping, releasing and forgetting, and what
once() answers in each case, Redis failing included; the Redis link's episode bookkeeping. No
Redis, no server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from jotc_api.idempotency import (
    ERASED,
    IDEMPOTENCY_TTL_SECONDS,
    IN_FLIGHT_TTL_SECONDS,
    MAX_KEPT_PROBLEM,
    IdempotencyStore,
    IdempotencyUnavailable,
    StoredReply,
    once,
)
from jotc_api.problems import Problem
from jotc_api.redis_link import RedisLink
from jotc_api.transport import Incoming, Reply


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[Callable[[], object]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def set(self, key: str, value: bytes, **options: Any) -> None:
        self.ops.append(lambda: self.redis.apply_set(key, value, **options))

    def sadd(self, key: str, member: str) -> None:
        self.ops.append(lambda: self.redis.sets.setdefault(key, set()).add(member))

    def expire(self, key: str, seconds: int) -> None:
        self.ops.append(lambda: self.redis.ttls.__setitem__(key, seconds))

    def delete(self, key: str) -> None:
        self.ops.append(lambda: self.redis.sets.pop(key, None))

    async def execute(self) -> list[object]:
        self.redis.check()
        return [op() for op in self.ops]


class FakeRedis:
    """The part of redis.asyncio.Redis the store uses; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.sets: dict[str, set[str]] = {}
        self.ttls: dict[str, int] = {}
        self.down = False
        self.vanish_once = False  # the claimed key expires between SET NX and GET

    def check(self) -> None:
        if self.down:
            raise RedisConnectionError("Connection refused")

    def apply_set(self, key: str, value: bytes, *, nx: bool = False, xx: bool = False, **options: Any) -> bool:
        if (nx and key in self.values) or (xx and key not in self.values):
            return False
        self.values[key] = value
        if "ex" in options:
            self.ttls[key] = options["ex"]
        return True

    async def set(self, key: str, value: bytes, **options: Any) -> bool:
        self.check()
        return self.apply_set(key, value, **options)

    async def get(self, key: str) -> bytes | None:
        self.check()
        if self.vanish_once:
            self.vanish_once = False
            self.values.pop(key, None)
        return self.values.get(key)

    async def delete(self, key: str) -> int:
        self.check()
        return 1 if self.values.pop(key, None) is not None else 0

    async def smembers(self, key: str) -> set[str]:
        self.check()
        return set(self.sets.get(key, set()))

    def pipeline(self, transaction: bool) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)


def store_with(redis: FakeRedis | None) -> tuple[IdempotencyStore, RedisLink]:
    link = RedisLink(None)
    link.client = redis  # type: ignore[assignment]
    link.healthy = redis is not None
    return IdempotencyStore(link), link


def request(key: bytes | None = b"key-1", body: bytes = b'{"c":[0,0]}') -> Incoming:
    return Incoming("application/json", key, b"", body)


def answering(reply: Reply | BaseException) -> tuple[Callable[[], Awaitable[Reply]], list[int]]:
    calls: list[int] = []

    async def answer() -> Reply:
        calls.append(1)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return answer, calls


async def no_replay(record: str) -> Reply:
    raise AssertionError("nothing to replay")


CREATED = Reply(201, "application/json", b'{"id":"r1"}', "/jumps/r1", record="r1", owner="ann")


async def test_first_request_is_answered_and_kept_then_replayed_from_its_record() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    answer, calls = answering(CREATED)
    first = await once(store, "/jumps", "json", request(), answer, no_replay)
    assert first == CREATED
    assert calls == [1]
    kept_key = store.redis_key("key-1")
    assert redis.ttls[kept_key] == IDEMPOTENCY_TTL_SECONDS
    kept = store.decoder.decode(redis.values[kept_key])
    assert (kept.done, kept.record, kept.body) == (True, "r1", b""), "a success keeps its record's id, not its body"
    assert redis.sets[store.user_index("ann")] == {kept_key}, "the owner's index lists the key, for erasure"

    replays: list[str] = []

    async def replay(record: str) -> Reply:
        replays.append(record)
        return Reply(201, "application/json", b'{"id":"r1"}', "/jumps/r1")

    again = await once(store, "/jumps", "json", request(), answer, replay)
    assert calls == [1], "the repeat is not processed again"
    assert replays == ["r1"]
    assert again.replayed
    assert again.location == "/jumps/r1"


async def test_an_answer_without_a_record_keeps_its_body() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    answer, _ = answering(Reply(200, "text/plain", b"4\n"))
    await once(store, "/jotc", "json", request(), answer, no_replay)
    kept = store.decoder.decode(redis.values[store.redis_key("key-1")])
    assert (kept.status, kept.body, kept.record) == (200, b"4\n", None)
    again = await once(store, "/jotc", "json", request(), answer, no_replay)
    assert (again.status, again.body, again.replayed) == (200, b"4\n", True)


async def test_a_repeat_while_the_first_is_in_flight_is_409() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    assert await store.claim("key-1", store.fingerprint("/jumps", "json", b"", b'{"c":[0,0]}')) is None
    assert redis.ttls[store.redis_key("key-1")] == IN_FLIGHT_TTL_SECONDS
    answer, calls = answering(CREATED)
    with pytest.raises(Problem) as refused:
        await once(store, "/jumps", "json", request(), answer, no_replay)
    assert (refused.value.status, refused.value.kind) == (409, "idempotency-in-flight")
    assert refused.value.headers == {"Retry-After": "1"}
    assert calls == []


async def test_the_same_key_with_another_request_is_422_and_an_erased_one_410() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    answer, _ = answering(CREATED)
    await once(store, "/jumps", "json", request(), answer, no_replay)
    with pytest.raises(Problem) as reused:
        await once(store, "/jumps", "json", request(body=b'{"c":[0,1,0]}'), answer, no_replay)
    assert (reused.value.status, reused.value.kind) == (422, "idempotency-key-reused")

    await store.forget_user("ann")
    assert store.user_index("ann") not in redis.sets, "the index goes with the erasure"
    tombstone = store.decoder.decode(redis.values[store.redis_key("key-1")])
    assert tombstone == StoredReply(ERASED, done=True), "nothing of the request is left, not even its fingerprint"
    with pytest.raises(Problem) as erased:
        await once(store, "/jumps", "json", request(), answer, no_replay)
    assert (erased.value.status, erased.value.kind) == (410, "erased")


async def test_a_key_that_expires_between_set_and_get_is_claimed_again() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    redis.values[store.redis_key("k")] = b"in the way"
    redis.vanish_once = True
    assert await store.claim("k", "fp") is None, "the second SET NX finds the key free and takes it"
    assert store.decoder.decode(redis.values[store.redis_key("k")]) == StoredReply("fp", done=False)


async def test_without_redis_a_key_is_refused_with_503_and_nothing_is_processed() -> None:
    store, _ = store_with(None)
    answer, calls = answering(CREATED)
    with pytest.raises(Problem) as refused:
        await once(store, "/jumps", "json", request(), answer, no_replay)
    assert (refused.value.status, refused.value.kind) == (503, "idempotency-unavailable")
    assert "REDIS_URL is not configured" in refused.value.detail
    assert refused.value.headers["Retry-After"]
    assert calls == []
    with pytest.raises(IdempotencyUnavailable):
        await store.release("k")


async def test_redis_down_at_the_claim_is_503_and_counted_once_per_episode() -> None:
    redis = FakeRedis()
    store, link = store_with(redis)
    redis.down = True
    answer, calls = answering(CREATED)
    for _ in range(2):
        with pytest.raises(Problem) as refused:
            await once(store, "/jumps", "json", request(), answer, no_replay)
        assert refused.value.status == 503
        assert "Connection refused" in refused.value.detail
    assert calls == []
    assert link.healthy is False
    redis.down = False
    await once(store, "/jumps", "json", request(), answer, no_replay)
    assert link.healthy is True, "the first success ends the episode"


async def test_a_request_without_a_key_bypasses_redis_entirely() -> None:
    store, _ = store_with(None)
    answer, calls = answering(CREATED)
    assert await once(store, "/jumps", "json", request(key=None), answer, no_replay) == CREATED
    assert calls == [1]


async def test_a_refusal_is_kept_and_replayed() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    refusal = Problem(422, "validation", "c: is wrong")
    answer, calls = answering(refusal)
    with pytest.raises(Problem):
        await once(store, "/jumps", "json", request(), answer, no_replay)
    replayed = await once(store, "/jumps", "json", request(), answer, no_replay)
    assert calls == [1], "the repeat gets the kept refusal without being processed"
    assert (replayed.status, replayed.media_type, replayed.replayed) == (422, "application/problem+json", True)
    assert replayed.body == refusal.body()


@pytest.mark.parametrize(
    "failure",
    [
        Problem(503, "database-unavailable", "PostgreSQL went away"),
        Problem(422, "validation", "x" * (MAX_KEPT_PROBLEM + 1)),
        RuntimeError("a bug"),
    ],
    ids=["server-error", "refusal-too-large-to-keep", "crash"],
)
async def test_what_is_not_kept_releases_the_key_for_a_retry(failure: BaseException) -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    answer, _ = answering(failure)
    with pytest.raises(type(failure)):
        await once(store, "/jumps", "json", request(), answer, no_replay)
    assert store.redis_key("key-1") not in redis.values, "the key is free again"
    retry, calls = answering(CREATED)
    assert await once(store, "/jumps", "json", request(), retry, no_replay) == CREATED
    assert calls == [1]


async def test_redis_failing_after_the_claim_never_fails_the_request() -> None:
    redis = FakeRedis()
    store, link = store_with(redis)
    fingerprint = store.fingerprint("/jumps", "json", b"", b"{}")
    assert await store.claim("k", fingerprint) is None
    redis.down = True
    await store.keep("k", StoredReply(fingerprint, True, 201, record="r1"), owner="ann")  # logged, not raised
    await store.release("k")
    await store.forget_user("ann")
    assert link.healthy is False


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"has space", "caf\u00e9".encode()])
async def test_an_invalid_key_is_422(key: bytes) -> None:
    store, _ = store_with(FakeRedis())
    with pytest.raises(Problem) as refused:
        await once(store, "/jumps", "json", request(key=key), answering(CREATED)[0], no_replay)
    assert refused.value.status == 422


def test_the_fingerprint_separates_its_parts() -> None:
    fingerprint = IdempotencyStore.fingerprint
    assert fingerprint("/jumps", "json", b"a", b"bc") != fingerprint("/jumps", "json", b"ab", b"c")
    assert fingerprint("/jumps", "json", b"", b"x") != fingerprint("/jotc", "json", b"", b"x")


# redis_link.py


async def test_the_link_says_not_configured_without_a_url() -> None:
    link = RedisLink(None)
    assert link.client is None
    assert link.healthy is False
    assert await link.ping() == "not configured"
    await link.close()  # nothing to close


class Pinging:
    def __init__(self) -> None:
        self.down = False

    async def ping(self) -> bool:
        if self.down:
            raise TimeoutError
        return True


async def test_the_link_is_degraded_while_redis_fails_and_ok_again_after() -> None:
    link = RedisLink(None)
    server = Pinging()
    link.client, link.healthy = server, True  # type: ignore[assignment]
    assert await link.ping() == "ok"
    server.down = True
    assert await link.ping() == "degraded"
    assert link.healthy is False
    server.down = False
    assert await link.ping() == "ok"
    assert link.healthy is True
