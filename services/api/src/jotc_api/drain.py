"""Draining: the window between "stop" and "stopped" in which the service keeps serving while
traffic moves away.

On SIGTERM (or SIGUSR1, which only starts the drain) the main process sets one byte in a small
file that it and every worker map into memory. From then on each worker answers ``/readyz`` with
503 ``draining``, so a health-checking balancer takes the instance out of rotation, and adds
``Connection: close`` to every answer, so a kept-alive client opens its next connection elsewhere.
The listener stays open meanwhile: a request that still arrives is served, never refused. After
``JOTC_DRAIN_SECONDS`` the main process hands over to Granian's own shutdown (server.py).

Reading the flag is one memory read: no system call, no clock, so every answer can afford it.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

FLAG_ENV = "JOTC_DRAIN_FLAG"  # set by the main process for its workers; not a user setting


class DrainFlag:
    """One shared byte: 0 serving, 1 draining. ``view[0]`` is the hot-path read."""

    __slots__ = ("path", "view")

    def __init__(self, view: mmap.mmap | bytearray, path: Path | None = None) -> None:
        self.view = view
        self.path = path

    @classmethod
    def create(cls) -> DrainFlag:
        """The main process's flag, in a private temporary directory, before workers spawn."""
        directory = Path(tempfile.mkdtemp(prefix="jotc-drain-"))
        path = directory / "draining"
        path.write_bytes(b"\0")
        with path.open("r+b") as file:
            view = mmap.mmap(file.fileno(), 1)
        return cls(view, path)

    @classmethod
    def attach(cls, env: Mapping[str, str] | None = None) -> DrainFlag:
        """A worker's read-only view of the main process's flag; a private flag when there is no
        main process (the app in a test client, or under another server)."""
        raw = (os.environ if env is None else env).get(FLAG_ENV, "")
        if not raw:
            return cls(bytearray(1))
        with open(raw, "rb") as file:
            return cls(mmap.mmap(file.fileno(), 1, prot=mmap.PROT_READ), Path(raw))

    @property
    def draining(self) -> bool:
        return self.view[0] != 0

    def begin(self) -> None:
        self.view[0] = 1

    def remove(self) -> None:
        """The main process's clean-up once every worker has exited."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path.parent.rmdir()
