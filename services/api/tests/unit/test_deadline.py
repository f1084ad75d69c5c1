"""deadline.Deadline: asyncio.timeout()'s behaviour at a fraction of its cost. No server."""

from __future__ import annotations

import asyncio

import pytest

from jotc_api.deadline import Deadline


async def test_a_block_past_its_deadline_raises_timeout_error_and_the_task_goes_on() -> None:
    with pytest.raises(TimeoutError, match=r"within 0\.01 s"), Deadline(0.01):
        await asyncio.sleep(5)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0, "the deadline's cancellation was consumed, not left pending"
    await asyncio.sleep(0)


async def test_a_block_done_in_time_leaves_no_timer_behind() -> None:
    with Deadline(0.01):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # past the deadline: a timer left behind would cancel this sleep


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    async def guarded() -> None:
        with Deadline(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_elsewhere_at_the_deadline_still_cancels() -> None:
    async def guarded() -> None:
        with Deadline(0):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)  # started: the deadline's timer is set
    # Due at the same moment, after the deadline's timer: both cancel before the task runs again.
    asyncio.get_running_loop().call_later(0, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_the_block_is_its_own() -> None:
    with pytest.raises(KeyError), Deadline(5):
        raise KeyError("mine")
