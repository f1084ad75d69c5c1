"""The objects a worker's requests share, typed: what ``create_litestar`` builds and the lifespan opens.

Every handler reaches them through ``services_of(app)``, so mypy checks each use and a reader
finds here what each one is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from jotc_api.drain import DrainFlag
from jotc_api.erasure import Eraser
from jotc_api.idempotency import IdempotencyStore
from jotc_api.memory import MemoryBudget
from jotc_api.readiness import DatabaseReadiness
from jotc_api.recorder import Recorder
from jotc_api.redis_link import RedisLink
from jotc_api.settings import Settings
from jotc_api.transport import Uploads

STATE_KEY = "services"  # where Litestar's app.state holds them


@dataclass(slots=True, eq=False)
class Services:
    settings: Settings
    redis: RedisLink  # rate limits, idempotency keys, the erasure index (redis_link.py)
    drain: DrainFlag  # set on SIGTERM: /readyz answers draining, answers carry Connection: close
    memory: MemoryBudget  # what requests in flight may hold (memory.py)
    uploads: Uploads  # how served routes receive bodies: slots, per-client shares, deadlines
    idempotency: IdempotencyStore
    # Opened by the lifespan (app.py) before the first request:
    engine: AsyncEngine = field(init=False)  # the traffic pool
    recorder: Recorder = field(init=False)  # the write path: batched commits
    readiness: DatabaseReadiness = field(init=False)  # /readyz's own connection
    eraser: Eraser = field(init=False)  # erasures that outlive their request


def services_of(app: Litestar) -> Services:
    return cast(Services, getattr(app.state, STATE_KEY))
