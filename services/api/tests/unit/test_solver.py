"""The solver against the contract's samples and a brute-force oracle (property-based)."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jotc_api import solver
from jotc_api.solver import Solution, Unreachable, solve


def clouds(text: str) -> bytes:
    return bytes(int(c) for c in text.split())


def bfs_min_jumps(c: bytes, k: int) -> int | None:
    """Oracle: breadth-first search over every legal jump."""
    n = len(c)
    dist = [-1] * n
    dist[0] = 0
    queue = deque([0])
    while queue:
        here = queue.popleft()
        for step in range(1, k + 1):
            there = here + step
            if there < n and c[there] == 0 and dist[there] < 0:
                dist[there] = dist[here] + 1
                queue.append(there)
    return dist[-1] if dist[-1] >= 0 else None


def naive_greedy_path(c: bytes, k: int) -> list[int]:
    """Oracle for the tie-break, written as the contract words it: farthest safe cloud in reach."""
    path, here = [0], 0
    while here < len(c) - 1:
        here = max(j for j in range(here + 1, min(here + k, len(c) - 1) + 1) if c[j] == 0)
        path.append(here)
    return path


def first_blocking_run(c: bytes, k: int) -> int | None:
    run = 0
    for i, value in enumerate(c):
        run = run + 1 if value else 0
        if run == k:
            return i - k + 1
    return None


@pytest.mark.parametrize(
    ("text", "jumps", "path"),
    [
        ("0 0 1 0 0 1 0", 4, [0, 1, 3, 4, 6]),
        ("0 0 0 0 1 0", 3, [0, 2, 3, 5]),
        ("0 1 0 0 0 1 0", 3, [0, 2, 4, 6]),
        ("0 0", 1, [0, 1]),
    ],
)
def test_reference_samples(text: str, jumps: int, path: list[int]) -> None:
    assert solve(clouds(text), 2) == Solution(jumps, path)


def test_reference_unreachable_sample() -> None:
    assert solve(clouds("0 1 1 0"), 2) == Unreachable(1)


def test_max_jump_one_walks_every_cloud_or_is_blocked() -> None:
    assert solve(bytes(5), 1) == Solution(4, [0, 1, 2, 3, 4])
    assert solve(clouds("0 0 1 0"), 1) == Unreachable(2)


def test_long_jumps_take_the_farthest_safe_cloud() -> None:
    assert solve(clouds("0 0 0 1 0 1 1 0"), 3) == Solution(3, [0, 2, 4, 7])


@st.composite
def games(draw: st.DrawFn, max_n: int = 300) -> tuple[bytes, int]:
    k = draw(st.integers(1, 7))
    n = draw(st.integers(2, max_n))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.7]))
    # The clouds from a drawn seed: drawing hundreds of floats one by one made these tests slow;
    # Hypothesis still shrinks n, k, density and the seed.
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # noqa: S311 - test data, not secrets
    inner = [1 if rng.random() < density else 0 for _ in range(n - 2)]
    return bytes([0, *inner, 0][:n]), k


def playable(c: bytes) -> bytes:
    """c with every thunderhead that follows another made a cumulus: a classic game (max_jump 2)
    that can always be won."""
    out = bytearray(c)
    for i in range(1, len(out)):
        if out[i] and out[i - 1]:
            out[i] = 0
    return bytes(out)


@settings(max_examples=600, deadline=None)
@given(games())
def test_solver_matches_the_oracles(game: tuple[bytes, int]) -> None:
    c, k = game
    answer = solve(c, k)
    best = bfs_min_jumps(c, k)
    if best is None:
        assert answer == Unreachable(first_blocking_run(c, k))
        return
    assert isinstance(answer, Solution)
    assert answer.jumps == best == len(answer.path) - 1
    assert answer.path == naive_greedy_path(c, k)


@settings(max_examples=300, deadline=None)
@given(games(max_n=400))
def test_vectorised_classic_game_matches_the_walk(game: tuple[bytes, int]) -> None:
    c = playable(game[0])
    assert first_blocking_run(c, 2) is None
    assert solver._classic_vectorised(c) == Solution(len(naive_greedy_path(c, 2)) - 1, naive_greedy_path(c, 2))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.lists(st.integers(0, 120), min_size=1, max_size=6))
def test_bulk_strides_over_long_clear_stretches(k: int, gaps: list[int]) -> None:
    """Long runs of cumuli separated by single thunderheads exercise the walk's bulk strides."""
    c = bytearray()
    for gap in gaps:
        c += bytes(gap + 1) + b"\x01"
    c += b"\x00"
    game = bytes(c)
    best = bfs_min_jumps(game, k)
    answer = solve(game, k)
    if best is None:
        assert isinstance(answer, Unreachable)
    else:
        assert answer == Solution(best, naive_greedy_path(game, k))


def test_a_million_clouds_are_solved() -> None:
    pattern = bytes([0, 0, 1, 0, 1, 0, 0, 0, 1, 0])
    c = pattern * 100_000
    answer = solve(c, 2)
    assert isinstance(answer, Solution)
    assert answer.path[-1] == len(c) - 1
    assert answer.jumps == len(answer.path) - 1
