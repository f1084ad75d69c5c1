"""Idempotency keys: the first answer to a request with an Idempotency-Key, kept and replayed.

The first request with a key claims it in Redis (SET NX, short TTL) and is
processed; its answer is kept for 24 h with a fingerprint of the request. A
repeat with the same fingerprint gets the kept answer (``Idempotent-Replayed``),
or 409 while the first is in flight; a different fingerprint is 422. Answers of
500 and above are not kept: the key is released so the client may retry it.
Without Redis a request that sends a key is refused (503): the promise cannot
be kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from jotc_api.problems import PROBLEM_JSON, RETRY_AFTER_SECONDS, FieldError, Problem, erased, validation_problem
from jotc_api.redis_link import REDIS_ERRORS, RedisLink
from jotc_api.transport import Incoming, Reply

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IN_FLIGHT_TTL_SECONDS = 120  # a worker that dies mid-request must not block its key for a day
ERASED = "erased"  # the fingerprint of a tombstone: the key's request was erased
MAX_KEPT_PROBLEM = 4096  # bytes of a refusal kept for replay


class StoredReply(msgspec.Struct):
    """What Redis keeps for a key. A success keeps only the id of its recorded request (``record``),
    so the answer is rebuilt from PostgreSQL on replay: nothing of the user's data sits in Redis,
    the kept value stays small whatever the input's size, and an erased request cannot be replayed.
    A refusal (4xx) keeps its problem body, which carries no user data."""

    fingerprint: str
    done: bool
    status: int = 0
    media_type: str = ""
    body: bytes = b""
    location: str | None = None
    record: str | None = None


class IdempotencyUnavailable(Exception):
    """Redis cannot be reached: the promise an Idempotency-Key asks for cannot be kept."""


class IdempotencyStore:
    """First request with a key: claim it (SET NX, short TTL) and process; keep the answer for
    24 h. Repeat with the same fingerprint: the kept answer, or 409 while the first is in flight.
    Different fingerprint: 422. Answers of 500 and above are not kept: the key is released so the
    client may retry it."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(StoredReply)

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
            raise IdempotencyUnavailable(str(exc)) from None
        self.link.succeeded()
        if claimed:
            return None
        if stored is None:  # expired between SET and GET: claim again
            return await self.claim(key, fingerprint)
        return self.decoder.decode(stored if isinstance(stored, bytes) else stored.encode())

    async def keep(self, key: str, reply: StoredReply, owner: str | None = None) -> None:
        await self.write("idempotency keep", self.redis_key(key), reply, owner)

    async def forget_user(self, user: str) -> None:
        """Erasure: every key a user's requests were made with becomes a tombstone holding nothing
        of theirs (not even the request's fingerprint), so a replay is answered 410 rather than
        recorded afresh. Best effort: a key that survives a Redis outage still replays as 410,
        its recorded request being gone."""
        client = self.require()
        index = self.user_index(user)
        tombstone = self.encoder.encode(StoredReply(ERASED, done=True))
        try:
            keys = await client.smembers(index)
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, tombstone, xx=True, keepttl=True)
                pipe.delete(index)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self.link.failed("idempotency forget user", exc)

    async def release(self, key: str) -> None:
        client = self.require()
        try:
            await client.delete(self.redis_key(key))
        except REDIS_ERRORS as exc:
            self.link.failed("idempotency release", exc)

    async def write(self, operation: str, redis_key: str, reply: StoredReply, owner: str | None = None) -> None:
        client = self.require()
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(redis_key, self.encoder.encode(reply), ex=IDEMPOTENCY_TTL_SECONDS)
                if owner is not None:
                    index = self.user_index(owner)
                    pipe.sadd(index, redis_key)
                    pipe.expire(index, IDEMPOTENCY_TTL_SECONDS)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            # The row is committed; the client gets its answer. A retry after the in-flight
            # claim expires would be processed again: logged, counted, and documented.
            self.link.failed(operation, exc)
        else:
            self.link.succeeded()

    def require(self) -> Redis:
        if self.link.client is None:
            raise IdempotencyUnavailable("REDIS_URL is not configured")
        return self.link.client

    @staticmethod
    def redis_key(key: str) -> str:
        return "jotc:idem:" + hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def user_index(user: str) -> str:
        return "jotc:idem-user:" + hashlib.sha256(user.encode()).hexdigest()


def valid_idempotency_key(raw: bytes) -> bool:
    return 1 <= len(raw) <= 255 and all(0x21 <= byte <= 0x7E for byte in raw)


async def once(
    store: IdempotencyStore,
    route: str,
    kind: str,
    incoming: Incoming,
    answer: Callable[[], Awaitable[Reply]],
    replay: Callable[[str], Awaitable[Reply]],
) -> Reply:
    """``answer()``, honouring the request's Idempotency-Key when it sends one."""
    if incoming.idempotency_key is None:
        return await answer()
    if not valid_idempotency_key(incoming.idempotency_key):
        raise validation_problem([FieldError("Idempotency-Key", "must be 1 to 255 visible ASCII characters")])
    name = incoming.idempotency_key.decode("ascii")
    fingerprint = store.fingerprint(route, kind, incoming.query, incoming.body)
    try:
        stored = await store.claim(name, fingerprint)
    except IdempotencyUnavailable as exc:
        raise Problem(
            503,
            "idempotency-unavailable",
            f"idempotency keys are kept in Redis, which is unavailable ({exc}); nothing was recorded",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    if stored is not None:
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
        if stored.record is not None:
            rebuilt = await replay(stored.record)
            return Reply(rebuilt.status, rebuilt.media_type, rebuilt.body, rebuilt.location, replayed=True)
        return Reply(stored.status, stored.media_type, stored.body, stored.location, replayed=True)
    try:
        reply = await answer()
    except Problem as problem:
        body = problem.body()
        if problem.status >= 500 or len(body) > MAX_KEPT_PROBLEM:
            # Nothing was recorded: let the client retry with the key (a refusal too large to keep
            # is simply given again on a retry).
            await store.release(name)
        else:
            await store.keep(name, StoredReply(fingerprint, True, problem.status, PROBLEM_JSON, body))
        raise
    except BaseException:
        await store.release(name)
        raise
    kept = StoredReply(fingerprint, True, reply.status, reply.media_type, location=reply.location, record=reply.record)
    if reply.record is None:
        kept.body = reply.body
    await store.keep(name, kept, owner=reply.owner)
    return reply
