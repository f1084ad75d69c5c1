"""scripts/lib/jotc_load.py: the open-loop load of the at-scale measurement and the erasure test."""

from __future__ import annotations

import asyncio
import time

import jotc_load
import pytest


def test_calls_start_on_time_whatever_their_latency() -> None:
    started: list[float] = []

    async def slow(number: int) -> None:
        started.append(time.monotonic())
        await asyncio.sleep(0.2)  # ten times the interval: a closed loop would send far fewer

    async def scenario() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await jotc_load.steady(slow, 50, stop)

    began = time.monotonic()
    count = asyncio.run(scenario())
    # 15 on time; a closed loop, waiting for each call's 0.2 s, would start 2.
    assert count == len(started) >= 5, f"{count} calls in 0.3 s at 50 a second"
    assert time.monotonic() - began >= 0.45, "the calls in flight were waited for"


def test_a_call_that_raised_is_raised_once_all_have_ended() -> None:
    ended: list[int] = []

    async def failing_third(number: int) -> None:
        await asyncio.sleep(0.05)
        if number == 3:
            raise ConnectionResetError("the third")
        ended.append(number)

    async def scenario() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        return await jotc_load.steady(failing_third, 50, stop)

    with pytest.raises(ConnectionResetError, match="the third"):
        asyncio.run(scenario())
    assert len(ended) >= 5, "the other calls ran to their end"
