"""A deadline for a block of code in a task: asyncio.timeout()'s mechanism without its bookkeeping.

asyncio.timeout() costs several times this per use, and the request path uses a deadline twice
(the body's, the batch's; figures in docs/performance.md). This is the same mechanism: a timer
that cancels the task, and on leaving the block, once the timer has fired, that cancellation
taken back (``uncancel``), whatever the block ended with. As with asyncio.timeout(), the block
raises TimeoutError when it ended cancelled and no cancellation other than the deadline's is
pending; a cancellation from anywhere else still cancels, and deadlines nest.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``with Deadline(seconds):`` inside a task; TimeoutError if the block is not done in time."""

    __slots__ = ("cancelling", "expired", "handle", "seconds", "task")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline is used inside a task")
        self.task = task
        self.cancelling = task.cancelling()  # requests already pending are not the deadline's
        self.expired = False
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self.expire)
        return self

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.handle.cancel()
        if self.expired and self.task.uncancel() <= self.cancelling and kind is asyncio.CancelledError:
            raise TimeoutError(f"not done within {self.seconds:g} s") from error
