"""Idempotency keys: the first answer to a request with an Idempotency-Key, kept and replayed.

The first request with a key claims it in Redis (SET NX, short TTL) and is
processed. A success is kept for 24 h as the id of its recorded request and a
fingerprint of the request: a repeat with the same fingerprint gets the answer
rebuilt from that record (``Idempotent-Replayed``), or 409 while the first is in
flight; a different fingerprint is 422. Nothing but a success is kept: after a
refusal (4xx) or a failure (5xx) the key is released, so a retry is answered
afresh (validation is deterministic: the same refusal) and a corrected request
may use the key. Without Redis a request that sends a key is refused (503):
the promise cannot be kept.

Erasure reaches the keys through a per-user index, a sorted set scored by each
key's expiry: every write of a key drops the entries of keys already expired,
so the index never lists more than the user's keys alive at their last write.
After an erasure, ``forget_erased`` walks the index a chunk at a time and turns
into tombstones (holding nothing of the request, not even its fingerprint)
only the keys whose recorded request is gone; a key of a request the erasure
kept (one made after it was asked) goes on replaying.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from jotc_api.problems import RETRY_AFTER_SECONDS, FieldError, Problem, erased, validation_problem
from jotc_api.redis_link import REDIS_ERRORS, RedisLink
from jotc_api.transport import Incoming, Reply

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IN_FLIGHT_TTL_SECONDS = 120  # a worker that dies mid-request must not block its key for a day
ERASED = "erased"  # the fingerprint of a tombstone: the key's request was erased
WALK_CHUNK = 500  # index entries per step of the walk after an erasure: one MGET, one query, one write
# The 503 detail names Redis's role, never its address or error (those go to the log: redis_link.py).
UNAVAILABLE = "Redis, which keeps idempotency keys, is unavailable"
NOT_CONFIGURED = "Redis, which keeps idempotency keys, is not configured (REDIS_URL)"
# KEYS: the keys to turn into tombstones; ARGV[1]: the tombstone; ARGV[i + 1]: what KEYS[i] held when
# the walk read it. A key that changed since (expired and claimed afresh) is left to its new request.
TOMBSTONE_IF_UNCHANGED = """
local turned = 0
for i, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[i + 1] then
        redis.call('SET', key, ARGV[1], 'KEEPTTL')
        turned = turned + 1
    end
end
return turned
"""


class StoredReply(msgspec.Struct, omit_defaults=True):
    """What Redis keeps for a key: the request's fingerprint and, once it succeeded, only the id of
    its recorded request (``record``), so the answer is rebuilt from PostgreSQL on replay: nothing
    of the user's data sits in Redis, the kept value has one size whatever the input, and an erased
    request cannot be replayed."""

    fingerprint: str
    done: bool
    record: str | None = None


class IdempotencyUnavailable(Exception):
    """Redis cannot be reached, or is not configured: the promise an Idempotency-Key asks for
    cannot be kept. The message is fit for a client: Redis's role, never its address."""


# Which of these recorded requests still exist: erasure.py's recorded_ids, given by the caller.
Recorded = Callable[[list[str]], Awaitable[set[str]]]


class IdempotencyStore:
    """First request with a key: claim it (SET NX, short TTL) and process; keep a success for
    ``ttl_seconds`` (24 h; tests pass less) and list it in its user's index. Repeat with the same
    fingerprint: the kept answer, or 409 while the first is in flight. Different fingerprint: 422.
    Anything but a success is not kept: the key is released."""

    def __init__(
        self, link: RedisLink, *, ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        self.link = link
        self.ttl_seconds = ttl_seconds
        self.clock = clock  # the wall clock the index's expiry scores are read against
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(StoredReply)
        self.tombstone = self.encoder.encode(StoredReply(ERASED, done=True))

    @staticmethod
    def fingerprint(route: str, media_type: str, query: bytes, body: bytes) -> str:
        digest = hashlib.sha256()
        for part in (route.encode(), media_type.encode(), query, body):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    async def claim(self, key: str, fingerprint: str) -> StoredReply | None:
        """None: the key is ours, go ahead. Else what is stored under it."""
        client = self.require()
        redis_key = self.redis_key(key)
        claim = self.encoder.encode(StoredReply(fingerprint, done=False))
        try:
            claimed = await client.set(redis_key, claim, nx=True, ex=IN_FLIGHT_TTL_SECONDS)
            stored = None if claimed else await client.get(redis_key)
        except REDIS_ERRORS as exc:
            self.link.failed("idempotency claim", exc)
            raise IdempotencyUnavailable(UNAVAILABLE) from None
        self.link.succeeded()
        if claimed:
            return None
        if stored is None:  # expired between SET and GET: claim again
            return await self.claim(key, fingerprint)
        return self.decoder.decode(stored if isinstance(stored, bytes) else stored.encode())

    async def keep(self, key: str, reply: StoredReply, owner: str | None = None) -> None:
        """Keep a finished answer for the key's lifetime and list the key in its owner's index, in
        one round trip that also drops the index's entries of keys expired by now."""
        client = self.require()
        redis_key = self.redis_key(key)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(redis_key, self.encoder.encode(reply), ex=self.ttl_seconds)
                if owner is not None:
                    index = self.user_index(owner)
                    now = self.clock()
                    pipe.zadd(index, {redis_key: now + self.ttl_seconds})
                    pipe.zremrangebyscore(index, "-inf", now)
                    pipe.expire(index, self.ttl_seconds)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            # The row is committed; the client gets its answer. A retry after the in-flight
            # claim expires would be processed again: logged, counted, and documented.
            self.link.failed("idempotency keep", exc)
        else:
            self.link.succeeded()

    async def release(self, key: str) -> None:
        client = self.require()
        try:
            await client.delete(self.redis_key(key))
        except REDIS_ERRORS as exc:
            self.link.failed("idempotency release", exc)

    async def forget_erased(self, user: str, recorded: Recorded) -> int:
        """After an erasure of ``user``: each key in their index whose recorded request is gone
        becomes a tombstone, so a replay is answered 410 and nothing derived from the request stays
        in Redis; keys whose requests were kept go on replaying. The index is walked WALK_CHUNK
        entries at a time (ZSCAN), each chunk one MGET, one ``recorded`` look-up and one write, and
        so is the previous release's index (a plain set, until it expires). Entries of keys that
        expired or are tombstones already leave the index. Returns how many keys were turned.
        Raises IdempotencyUnavailable when Redis fails (and what ``recorded`` raises): the caller
        tries again, and a walk done twice does no harm."""
        client = self.require()
        index, old_index = self.user_index(user), self.legacy_index(user)
        turned = 0
        try:
            cursor = 0
            while True:
                cursor, entries = await client.zscan(index, cursor, count=WALK_CHUNK)
                turned += await self._forget_chunk(client, index, [entry[0] for entry in entries], recorded)
                if cursor == 0:
                    break
            while True:
                cursor, keys = await client.sscan(old_index, cursor, count=WALK_CHUNK)
                turned += await self._forget_chunk(client, old_index, keys, recorded, legacy=True)
                if cursor == 0:
                    break
        except REDIS_ERRORS as exc:
            self.link.failed("idempotency forget erased", exc)
            raise IdempotencyUnavailable(UNAVAILABLE) from None
        self.link.succeeded()
        return turned

    async def _forget_chunk(
        self, client: Redis, index: str, keys: Iterable[object], recorded: Recorded, *, legacy: bool = False
    ) -> int:
        names = [key.decode() if isinstance(key, bytes) else str(key) for key in keys]
        if not names:
            return 0
        stale: list[str] = []  # entries of keys expired or already tombstones
        kept: dict[str, tuple[bytes, str]] = {}  # key: (its value as read, its record)
        for name, value in zip(names, await client.mget(names), strict=True):
            if value is None:
                stale.append(name)
                continue
            raw = value.encode() if isinstance(value, str) else bytes(value)
            try:
                stored = self.decoder.decode(raw)
            except msgspec.DecodeError:
                continue  # not ours to judge: left as it is
            if stored.fingerprint == ERASED:
                stale.append(name)
            elif stored.done and stored.record is not None:
                kept[name] = (raw, stored.record)
        alive = await recorded([record for _, record in kept.values()]) if kept else set()
        gone = {name: value for name, (value, record) in kept.items() if record not in alive}
        if not stale and not gone:
            return 0
        async with client.pipeline(transaction=False) as pipe:
            if gone:
                pipe.eval(TOMBSTONE_IF_UNCHANGED, len(gone), *gone, self.tombstone, *gone.values())
            (pipe.srem if legacy else pipe.zrem)(index, *stale, *gone)
            results = await pipe.execute()
        return int(results[0]) if gone else 0

    def require(self) -> Redis:
        if self.link.client is None:
            raise IdempotencyUnavailable(NOT_CONFIGURED)
        return self.link.client

    @staticmethod
    def redis_key(key: str) -> str:
        return "jotc:idem:" + hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def user_index(user: str) -> str:
        """The user's keys, scored by expiry (a sorted set: a new name, so the previous release's
        plain set under ``legacy_index`` is never read as one)."""
        return "jotc:idem-keys:" + hashlib.sha256(user.encode()).hexdigest()

    @staticmethod
    def legacy_index(user: str) -> str:
        """The previous release's index of the user's keys (a set that only grew): walked by
        forget_erased, never written; it expires a day after that release's last write."""
        return "jotc:idem-user:" + hashlib.sha256(user.encode()).hexdigest()


def valid_idempotency_key(raw: bytes) -> bool:
    return 1 <= len(raw) <= 255 and all(0x21 <= byte <= 0x7E for byte in raw)


@dataclass(frozen=True, slots=True)
class Claim:
    """An Idempotency-Key this request now holds: its answer is kept under it (``keep_reply``),
    or, when nothing was recorded, the key is released for a retry."""

    name: str
    fingerprint: str


async def claim_key(store: IdempotencyStore, route: str, incoming: Incoming) -> Claim | StoredReply:
    """The request's key claimed for it, or what its first request left under it, to be replayed.
    Refused as the key's state says: 422 (invalid, or used with another request), 409 (the first
    still in flight), 410 (its request erased), 503 (Redis unavailable)."""
    assert incoming.idempotency_key is not None
    if not valid_idempotency_key(incoming.idempotency_key):
        raise validation_problem([FieldError("Idempotency-Key", "must be 1 to 255 visible ASCII characters")])
    name = incoming.idempotency_key.decode("ascii")
    fingerprint = store.fingerprint(route, incoming.kind, incoming.query, incoming.body)
    try:
        stored = await store.claim(name, fingerprint)
    except IdempotencyUnavailable as exc:
        raise Problem(
            503,
            "idempotency-unavailable",
            f"{exc}; nothing was recorded",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    if stored is None:
        return Claim(name, fingerprint)
    if stored.fingerprint == ERASED:
        raise erased()
    if stored.fingerprint != fingerprint:
        raise Problem(422, "idempotency-key-reused", "this Idempotency-Key was used with a different request")
    if not stored.done:
        raise Problem(
            409,
            "idempotency-in-flight",
            "the first request with this Idempotency-Key is still being processed",
            headers={"Retry-After": "1"},
        )
    return stored


async def keep_reply(store: IdempotencyStore, claim: Claim, reply: Reply) -> None:
    """A success, kept under its key as the id of its recorded request: a repeat's status, body
    and Location are rebuilt from it."""
    assert reply.record is not None, "every served answer names its recorded request"
    await store.keep(claim.name, StoredReply(claim.fingerprint, True, record=reply.record), owner=reply.owner)
