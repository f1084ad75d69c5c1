"""A deadline for a block of code in a task: asyncio.timeout()'s mechanism without its bookkeeping.

asyncio.timeout() measured at ~10 µs a use on the bench machine (issue 16), and the request path
used it twice (the body's deadline, the batch's): a timer that cancels the task when it fires,
and a cancellation taken for the deadline's only when the timer fired and nothing else cancelled
the task meanwhile (``uncancel``), costs ~2 µs. Like asyncio.timeout(), the block then raises
TimeoutError, and a cancellation from anywhere else still cancels.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``with Deadline(seconds):`` inside a task; TimeoutError if the block is not done in time."""

    __slots__ = ("expired", "handle", "seconds", "task")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline is used inside a task")
        self.task = task
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self.expire)
        return self

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.handle.cancel()
        if kind is asyncio.CancelledError and self.expired and self.task.uncancel() == 0:
            raise TimeoutError(f"not done within {self.seconds:g} s") from error
