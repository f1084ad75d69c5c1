"""An independent reference solver: the load test checks the API's answers against it.

Deliberately the plainest possible statement of the rules (not the API's code): from each
cloud jump to the farthest safe cloud within max_jump; None when the last cloud is unreachable.
"""

from __future__ import annotations


def min_jumps(clouds: list[int], max_jump: int) -> int | None:
    here, jumps, last = 0, 0, len(clouds) - 1
    while here < last:
        reach = [j for j in range(here + 1, min(here + max_jump, last) + 1) if clouds[j] == 0]
        if not reach:
            return None
        here = reach[-1]
        jumps += 1
    return jumps
