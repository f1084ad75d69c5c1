"""Jumping on the Clouds: the minimum number of jumps and one shortest path. Pure: no I/O.

Clouds are a ``bytes`` of 0 (cumulus, safe) and 1 (thunderhead) values. From
cloud ``i`` a player may jump to ``i + 1 … i + max_jump``, never onto a
thunderhead. Jumping to the farthest safe cloud in reach is optimal (any
shortest path can be moved, jump by jump, onto the greedy one without getting
longer), and it is the contract's tie-break, so the greedy path is the answer.

The last cloud is unreachable exactly when ``max_jump`` or more thunderheads
stand in a row; the first such run is found by one ``bytes.find``.

Three implementations of the same greedy walk, picked by speed:
- ``max_jump == 1``: every cloud, or blocked by the first thunderhead;
- the classic game (``max_jump == 2``) on large inputs, vectorised with NumPy:
  every thunderhead stands alone, so the walk crosses each one from the cloud
  before it to the cloud after it, and inside each run of cumuli it lands on
  every second cloud from the run's start, plus the run's last cloud;
- otherwise a walk that covers each clear stretch of cumuli with one ``range``
  and finds each landing near a thunderhead with one ``bytes.rfind``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this size the NumPy set-up costs more than the plain walk saves.
VECTORISE_FROM = 4096
# The walk switches to bulk strides once this many strides ahead are free of thunderheads.
CLEAR_PROBE_STRIDES = 16


@dataclass(frozen=True, slots=True)
class Solution:
    jumps: int
    path: list[int]


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The last cloud cannot be reached: ``blocked_at`` starts the first run of ≥ max_jump 1s."""

    blocked_at: int


def solve(clouds: bytes, max_jump: int) -> Solution | Unreachable:
    """Solve one game. Expects len ≥ 2, values 0/1, first and last cloud 0, max_jump ≥ 1."""
    blocked_at = clouds.find(b"\x01" * max_jump)
    if blocked_at >= 0:
        return Unreachable(blocked_at)
    n = len(clouds)
    if max_jump == 1:
        return Solution(n - 1, list(range(n)))
    if max_jump == 2 and n >= VECTORISE_FROM:
        return _classic_vectorised(clouds)
    return _greedy_walk(clouds, max_jump)


def _greedy_walk(clouds: bytes, max_jump: int) -> Solution:
    last = len(clouds) - 1
    path = [0]
    here = 0
    probe = CLEAR_PROBE_STRIDES * max_jump
    strides = 0
    while here < last:
        # Never -1: no run of max_jump thunderheads exists (checked by the caller).
        landing = clouds.rfind(b"\x00", here + 1, min(here + max_jump, last) + 1)
        path.append(landing)
        full_stride = landing - here == max_jump
        here = landing
        strides = strides + 1 if full_stride else 0
        # Two full strides in a row hint at a clear stretch; only then look ahead for one.
        if strides >= 2 and clouds.find(b"\x01", here, here + probe) < 0:
            # A long stretch of cumuli: land every max_jump clouds up to its end, in C.
            next_thunder = clouds.find(b"\x01", here)
            clear_until = last if next_thunder < 0 else next_thunder - 1
            bulk = (clear_until - here) // max_jump
            path.extend(range(here + max_jump, here + bulk * max_jump + 1, max_jump))
            here += bulk * max_jump
    return Solution(len(path) - 1, path)


def _classic_vectorised(clouds: bytes) -> Solution:
    c = np.frombuffer(clouds, dtype=np.uint8)
    n = c.size
    thunder = np.flatnonzero(c.view(np.bool_))
    # Runs of cumuli, each with the thunderhead that ends it (the last run has none).
    starts = np.empty(thunder.size + 1, dtype=np.intp)
    starts[0] = 0
    starts[1:] = thunder + 1
    lengths = np.empty(thunder.size + 1, dtype=np.intp)
    lengths[:-1] = thunder + 1
    lengths[-1] = n
    lengths -= starts
    # 0 where the distance from the run's start is even: the clouds the walk lands on.
    off_path = np.repeat((starts & 1).astype(np.uint8), lengths)
    off_path[1::2] ^= 1
    off_path |= c
    on_path = off_path == 0
    on_path[thunder - 1] = True  # the take-off cloud before each thunderhead
    on_path[n - 1] = True
    path: list[int] = np.flatnonzero(on_path).tolist()
    return Solution(len(path) - 1, path)
