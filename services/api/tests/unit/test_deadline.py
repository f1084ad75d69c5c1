"""deadline.Deadline: asyncio.timeout()'s behaviour at a fraction of its cost. No server."""

from __future__ import annotations

import asyncio
import contextlib

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


async def swallowing(seconds: float) -> None:
    """A block whose library swallows the cancellation: it then ends normally."""
    with Deadline(seconds), contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)


async def replacing(seconds: float) -> None:
    """A block whose library turns the cancellation into another error."""
    with Deadline(seconds):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise ValueError("replaced") from None


async def sleeping_in(outer: float, inner: float) -> None:
    with Deadline(outer), Deadline(inner):
        await asyncio.sleep(5)


def pending_cancellations() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def test_a_block_that_swallows_the_cancellation_leaves_none_pending() -> None:
    await swallowing(0)
    assert pending_cancellations() == 0, "the deadline's cancellation is taken back all the same"
    with pytest.raises(TimeoutError):  # and the next deadline in this task still works
        await sleeping_in(5, 0)


async def test_a_block_that_turns_the_cancellation_into_another_error_leaves_none_pending() -> None:
    with pytest.raises(ValueError, match="replaced"):
        await replacing(0)
    assert pending_cancellations() == 0


async def test_nested_deadlines_each_raise_for_their_own_time() -> None:
    with pytest.raises(TimeoutError, match=r"within 0 s"):  # the inner one
        await sleeping_in(5, 0)
    with pytest.raises(TimeoutError, match=r"within 0\.01 s"):  # the outer one
        await sleeping_in(0.01, 5)
    assert pending_cancellations() == 0
