"""Idempotency keys against a fake Redis: claiming, keeping, releasing, the user's index and the
walk after an erasure, and what once() answers in each case, Redis failing included; the Redis
link's episode bookkeeping. No Redis, no server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from jotc_api.idempotency import (
    ERASED,
    IDEMPOTENCY_TTL_SECONDS,
    IN_FLIGHT_TTL_SECONDS,
    NOT_CONFIGURED,
    UNAVAILABLE,
    WALK_CHUNK,
    IdempotencyStore,
    IdempotencyUnavailable,
    StoredReply,
)
from jotc_api.problems import Problem
from jotc_api.redis_link import RedisLink
from jotc_api.served import ServedRoute, answer_once
from jotc_api.services import Services
from jotc_api.transport import Incoming, Reply


class FakePipeline:
    """Commands queued, then run in order by execute(), as a pipeline's are."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[Callable[[], object]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        command = getattr(self.redis, "do_" + name)
        return lambda *args, **options: self.ops.append(partial(command, *args, **options))

    async def execute(self) -> list[object]:
        self.redis.check()
        return [op() for op in self.ops]


class FakeRedis:
    """The part of redis.asyncio.Redis the store uses (each ``do_<command>`` is the command, called
    directly or from a pipeline); ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.sets: dict[str, set[str]] = {}
        self.ttls: dict[str, int] = {}
        self.down = False
        self.vanish_once = False  # the claimed key expires between SET NX and GET
        self.scans: list[int] = []  # how many entries each ZSCAN/SSCAN step returned
        self.before_eval: Callable[[], None] | None = None  # runs just before the script

    def check(self) -> None:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6391. Connection refused.")

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        command = getattr(self, "do_" + name)

        async def call(*args: Any, **options: Any) -> Any:
            self.check()
            return command(*args, **options)

        return call

    def pipeline(self, transaction: bool) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)

    def do_set(self, key: str, value: bytes, *, nx: bool = False, xx: bool = False, **options: Any) -> bool:
        if (nx and key in self.values) or (xx and key not in self.values):
            return False
        self.values[key] = value
        if "ex" in options:
            self.ttls[key] = options["ex"]
        return True

    def do_get(self, key: str) -> bytes | None:
        if self.vanish_once:
            self.vanish_once = False
            self.values.pop(key, None)
        return self.values.get(key)

    def do_mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.values.get(key) for key in keys]

    def do_delete(self, key: str) -> int:
        return 1 if self.values.pop(key, None) is not None else 0

    def do_expire(self, key: str, seconds: int) -> None:
        self.ttls[key] = seconds

    def do_zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.zsets.setdefault(key, {}).update(mapping)

    def do_zremrangebyscore(self, key: str, low: str, high: float) -> None:
        assert low == "-inf"
        entries = self.zsets.get(key, {})
        for member in [member for member, score in entries.items() if score <= high]:
            del entries[member]

    def do_zrem(self, key: str, *members: str) -> None:
        for member in members:
            self.zsets.get(key, {}).pop(member, None)

    def do_srem(self, key: str, *members: str) -> None:
        self.sets.get(key, set()).difference_update(members)

    def scan(self, members: Iterable[str], cursor: Any, count: int) -> tuple[Any, list[str]]:
        # The cursor is the last member returned: entries removed meanwhile shift nothing (as with
        # Redis, an entry present throughout the walk is returned).
        after = [member for member in sorted(members) if cursor == 0 or member > cursor][:count]
        self.scans.append(len(after))
        return (after[-1] if len(after) == count else 0), after

    def do_zscan(self, key: str, cursor: Any, count: int) -> tuple[Any, list[tuple[str, float]]]:
        entries = self.zsets.get(key, {})
        cursor, members = self.scan(entries, cursor, count)
        return cursor, [(member, entries[member]) for member in members]

    def do_sscan(self, key: str, cursor: Any, count: int) -> tuple[Any, list[str]]:
        return self.scan(self.sets.get(key, set()), cursor, count)

    def do_eval(self, script: str, numkeys: int, *keys_and_args: Any) -> int:
        """TOMBSTONE_IF_UNCHANGED, as Redis runs it."""
        if self.before_eval is not None:
            self.before_eval()
        keys, (tombstone, *expected) = keys_and_args[:numkeys], keys_and_args[numkeys:]
        turned = 0
        for key, value in zip(keys, expected, strict=True):
            if self.values.get(key) == value:
                self.values[key] = tombstone
                turned += 1
        return turned


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def store_with(redis: FakeRedis | None, **options: Any) -> tuple[IdempotencyStore, RedisLink]:
    link = RedisLink(None)
    link.client = redis  # type: ignore[assignment]
    link.healthy = redis is not None
    return IdempotencyStore(link, **options), link


async def once(
    store: IdempotencyStore,
    route: str,
    kind: str,
    incoming: Incoming,
    answer: Callable[[], Awaitable[Reply]],
    replay: Callable[[str], Awaitable[Reply]],
) -> Reply:
    """served.answer_once with only the idempotency store behind it."""

    async def answer_route(_: Services, __: Incoming) -> Reply:
        return await answer()

    async def replay_route(_: Services, __: str, record: str) -> Reply:
        return await replay(record)

    served = ServedRoute(route, answer=answer_route, replay=replay_route, text=True)
    incoming = msgspec.structs.replace(incoming, kind=kind)
    return await answer_once(cast(Services, SimpleNamespace(idempotency=store)), served, incoming)


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


def created(record: str = "r1", owner: str = "ann") -> Reply:
    return Reply(
        201, "application/json", b'{"id":"%s"}' % record.encode(), f"/jumps/{record}", record=record, owner=owner
    )


CREATED = created()


def recording_of(alive: set[str]) -> tuple[Callable[[list[str]], Awaitable[set[str]]], list[list[str]]]:
    """A stand-in for erasure.recorded_ids: which ids are still recorded, and the look-ups made."""
    asked: list[list[str]] = []

    async def recorded(ids: list[str]) -> set[str]:
        asked.append(ids)
        return alive & set(ids)

    return recorded, asked


async def test_first_request_is_answered_and_kept_then_replayed_from_its_record() -> None:
    redis = FakeRedis()
    clock = Clock()
    store, _ = store_with(redis, clock=clock)
    answer, calls = answering(CREATED)
    first = await once(store, "/jumps", "json", request(), answer, no_replay)
    assert first == CREATED
    assert calls == [1]
    kept_key = store.redis_key("key-1")
    assert redis.ttls[kept_key] == IDEMPOTENCY_TTL_SECONDS
    kept = store.decoder.decode(redis.values[kept_key])
    assert kept == StoredReply(kept.fingerprint, True, record="r1"), "a success keeps its record's id, not its body"
    index = store.user_index("ann")
    assert redis.zsets[index] == {kept_key: clock.now + IDEMPOTENCY_TTL_SECONDS}, "listed with its expiry, for erasure"
    assert redis.ttls[index] == IDEMPOTENCY_TTL_SECONDS

    replays: list[str] = []

    async def replay(record: str) -> Reply:
        replays.append(record)
        return Reply(201, "application/json", b'{"id":"r1"}', "/jumps/r1")

    again = await once(store, "/jumps", "json", request(), answer, replay)
    assert calls == [1], "the repeat is not processed again"
    assert replays == ["r1"]
    assert again.replayed
    assert again.location == "/jumps/r1"


async def test_the_index_drops_the_entries_of_expired_keys_at_the_next_write() -> None:
    redis = FakeRedis()
    clock = Clock()
    store, _ = store_with(redis, ttl_seconds=60, clock=clock)
    for n in range(50):
        await store.keep(f"old-{n}", StoredReply("fp", True, record=f"r{n}"), owner="ann")
    assert len(redis.zsets[store.user_index("ann")]) == 50
    clock.now += 60  # every one of them expired
    await store.keep("new", StoredReply("fp", True, record="r-new"), owner="ann")
    assert redis.zsets[store.user_index("ann")] == {store.redis_key("new"): clock.now + 60}
    assert redis.ttls[store.redis_key("new")] == 60, "the key lives as long as its index entry"


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


async def test_the_same_key_with_another_request_is_422_and_a_tombstone_410() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    answer, _ = answering(CREATED)
    await once(store, "/jumps", "json", request(), answer, no_replay)
    with pytest.raises(Problem) as reused:
        await once(store, "/jumps", "json", request(body=b'{"c":[0,1,0]}'), answer, no_replay)
    assert (reused.value.status, reused.value.kind) == (422, "idempotency-key-reused")

    recorded, _ = recording_of(alive=set())  # r1 was erased
    assert await store.forget_erased("ann", recorded) == 1
    assert store.user_index("ann") not in redis.zsets or not redis.zsets[store.user_index("ann")]
    tombstone = store.decoder.decode(redis.values[store.redis_key("key-1")])
    assert tombstone == StoredReply(ERASED, done=True), "nothing of the request is left, not even its fingerprint"
    with pytest.raises(Problem) as erased:
        await once(store, "/jumps", "json", request(), answer, no_replay)
    assert (erased.value.status, erased.value.kind) == (410, "erased")


async def test_after_an_erasure_only_the_keys_of_erased_requests_become_tombstones() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    count = WALK_CHUNK * 2 + 7  # three chunks
    for n in range(count):
        await once(store, "/jumps", "json", request(f"k{n}".encode()), answering(created(f"r{n}"))[0], no_replay)
    kept_after_the_cutoff = {f"r{n}" for n in range(0, count, 3)}
    recorded, asked = recording_of(kept_after_the_cutoff)
    index = store.user_index("ann")
    redis.values.pop(store.redis_key("k1"))  # a key that expired: its entry goes too

    turned = await store.forget_erased("ann", recorded)

    assert turned == count - len(kept_after_the_cutoff) - 1
    assert redis.scans == [WALK_CHUNK, WALK_CHUNK, 7, 0], "the index is walked a chunk at a time, then the old set"
    assert len(asked) == 3, "one look-up of records per chunk"
    assert all(len(ids) <= WALK_CHUNK for ids in asked)
    for n in range(count):
        value = redis.values.get(store.redis_key(f"k{n}"))
        if n == 1:
            assert value is None
        elif f"r{n}" in kept_after_the_cutoff:
            assert store.decoder.decode(value or b"").record == f"r{n}", "a kept request's key still replays"
        else:
            assert value == store.tombstone
    assert set(redis.zsets[index]) == {store.redis_key(f"k{n}") for n in range(0, count, 3)}, (
        "the index keeps only the keys that may still be erased"
    )
    replays: list[str] = []

    async def replay(record: str) -> Reply:
        replays.append(record)
        return created(record)

    again = await once(store, "/jumps", "json", request(b"k3"), answering(CREATED)[0], replay)
    assert (again.status, again.replayed, replays) == (201, True, ["r3"])
    assert await store.forget_erased("ann", recorded) == 0, "a second walk changes nothing"


async def test_the_walk_also_covers_the_previous_releases_index() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    legacy = store.legacy_index("ann")
    for n in range(3):  # as the previous release kept them: a plain set of key names
        redis.values[store.redis_key(f"k{n}")] = store.encoder.encode(StoredReply("fp", True, record=f"r{n}"))
        redis.sets.setdefault(legacy, set()).add(store.redis_key(f"k{n}"))
    recorded, _ = recording_of({"r2"})
    assert await store.forget_erased("ann", recorded) == 2
    assert redis.values[store.redis_key("k0")] == redis.values[store.redis_key("k1")] == store.tombstone
    assert store.decoder.decode(redis.values[store.redis_key("k2")]).record == "r2"
    assert redis.sets[legacy] == {store.redis_key("k2")}


async def test_a_key_that_changes_while_the_walk_looks_is_left_to_its_new_request() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    await once(store, "/jumps", "json", request(), answering(CREATED)[0], no_replay)
    claim = store.encoder.encode(StoredReply("another request", done=False))

    def expired_and_claimed_again() -> None:
        redis.values[store.redis_key("key-1")] = claim

    redis.before_eval = expired_and_claimed_again
    assert await store.forget_erased("ann", recording_of(set())[0]) == 0
    assert redis.values[store.redis_key("key-1")] == claim


async def test_in_flight_and_unreadable_keys_are_left_alone_by_the_walk() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    index = store.user_index("ann")
    in_flight = store.encoder.encode(StoredReply("fp", done=False))
    redis.values.update({store.redis_key("a"): in_flight, store.redis_key("b"): b"\xc1 not msgpack"})
    redis.zsets[index] = {store.redis_key("a"): 1.0, store.redis_key("b"): 1.0}
    recorded, asked = recording_of(set())
    assert await store.forget_erased("ann", recorded) == 0
    assert asked == [], "nothing to look up"
    assert redis.values[store.redis_key("a")] == in_flight
    assert len(redis.zsets[index]) == 2


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
    assert refused.value.detail == f"{NOT_CONFIGURED}; nothing was recorded"
    assert refused.value.headers["Retry-After"]
    assert calls == []
    with pytest.raises(IdempotencyUnavailable):
        await store.release("k")


async def test_redis_down_at_the_claim_is_503_naming_its_role_not_its_address() -> None:
    redis = FakeRedis()
    store, link = store_with(redis)
    redis.down = True
    answer, calls = answering(CREATED)
    for _ in range(2):
        with pytest.raises(Problem) as refused:
            await once(store, "/jumps", "json", request(), answer, no_replay)
        assert refused.value.status == 503
        assert refused.value.detail == f"{UNAVAILABLE}; nothing was recorded"
        assert "127.0.0.1" not in refused.value.detail
        assert "6391" not in refused.value.detail
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


async def test_a_refusal_is_not_kept_so_a_corrected_request_may_use_the_key() -> None:
    redis = FakeRedis()
    store, _ = store_with(redis)
    refusal = Problem(422, "validation", "c: is wrong")
    answer, calls = answering(refusal)
    for _ in range(2):
        with pytest.raises(Problem) as refused:
            await once(store, "/jumps", "json", request(), answer, no_replay)
        assert refused.value is refusal
        assert store.redis_key("key-1") not in redis.values, "nothing is kept of a refusal"
    assert calls == [1, 1], "the retry is answered afresh"
    corrected, _ = answering(CREATED)
    assert await once(store, "/jumps", "json", request(body=b'{"c":[0,0,0]}'), corrected, no_replay) == CREATED


@pytest.mark.parametrize(
    "failure",
    [
        Problem(503, "database-unavailable", "PostgreSQL went away"),
        Problem(422, "validation", "x" * 10_000),
        RuntimeError("a bug"),
    ],
    ids=["server-error", "refusal", "crash"],
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


async def test_redis_failing_after_the_claim_never_fails_the_request_and_the_walk_says_so() -> None:
    redis = FakeRedis()
    store, link = store_with(redis)
    fingerprint = store.fingerprint("/jumps", "json", b"", b"{}")
    assert await store.claim("k", fingerprint) is None
    redis.down = True
    await store.keep("k", StoredReply(fingerprint, True, record="r1"), owner="ann")  # logged, not raised
    await store.release("k")
    with pytest.raises(IdempotencyUnavailable) as walk:
        await store.forget_erased("ann", recording_of(set())[0])  # its caller tries again later
    assert str(walk.value) == UNAVAILABLE
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
