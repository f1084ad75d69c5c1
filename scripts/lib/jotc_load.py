"""An open-loop load: a call started at a steady rate whatever its latency, so a stall in the
server shows as latency of the calls waiting on it, where closed-loop clients (each waiting for
its answer before sending again) would merely send fewer. The at-scale measurement
(scripts/scale/measure.py) and the API's erasure test use it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any


async def steady(call: Callable[[int], Coroutine[Any, Any, None]], rate: float, stop: asyncio.Event) -> int:
    """Start call(1), call(2), ... ``rate`` times a second until ``stop`` is set, then wait for
    the calls in flight; returns how many were started. A call that raised is not lost among the
    finished ones: the first such exception is raised once all have ended (a call counts the
    failures it expects, such as a refused connection, itself)."""
    running: set[asyncio.Task[None]] = set()
    raised: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            raised.append(error)

    began = time.monotonic()
    number = 0
    while not stop.is_set():
        number += 1
        task = asyncio.create_task(call(number))
        running.add(task)
        task.add_done_callback(finished)
        await asyncio.sleep(max(0.0, began + number / rate - time.monotonic()))
    await asyncio.gather(*running, return_exceptions=True)  # their exceptions reach `finished` too
    if raised:
        raise raised[0]
    return number
