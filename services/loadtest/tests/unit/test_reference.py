"""The reference solver and the inputs the load test sends, in process: the solver's answers on
known games, and generated games that are always solvable within their max_jump."""

from __future__ import annotations

import random

import pytest

from jotc_loadtest.reference import min_jumps
from jotc_loadtest.scenarios import INVALID, clouds, digit_string, json_body


@pytest.mark.parametrize(
    ("game", "max_jump", "jumps"),
    [
        ([0, 0], 2, 1),
        ([0, 0, 1, 0, 0, 1, 0], 2, 4),
        ([0, 0, 0, 0, 1, 0], 2, 3),
        ([0, 0, 0, 1, 0, 0], 2, 3),
        ([0, 1, 1, 0], 3, 1),
        ([0, 0, 0, 0, 0, 0, 0], 10, 1),
        ([0], 2, 0),
    ],
)
def test_the_reference_solver_on_known_games(game: list[int], max_jump: int, jumps: int) -> None:
    found = min_jumps(game, max_jump)
    assert found == jumps, f"{game} with max_jump {max_jump}: {found} jumps, expected {jumps}"


@pytest.mark.parametrize(("game", "max_jump"), [([0, 1, 1, 0], 2), ([0, 1, 0], 1)])
def test_an_unreachable_last_cloud_has_no_answer(game: list[int], max_jump: int) -> None:
    found = min_jumps(game, max_jump)
    assert found is None, f"{game} with max_jump {max_jump} is unsolvable, got {found}"


@pytest.mark.parametrize("max_jump", [2, 3, 4, 10])
def test_generated_games_are_solvable(max_jump: int) -> None:
    rng = random.Random(max_jump)
    for _ in range(200):
        game = clouds(rng, rng.randint(2, 300), max_jump, thunder=0.6)
        assert game[0] == game[-1] == 0, f"first or last cloud unsafe: {game}"
        assert set(game) <= {0, 1}, f"a value other than 0 and 1: {game}"
        text = "".join(map(str, game))
        assert "1" * max_jump not in text, f"{max_jump} thunderheads in a row: {text}"
        assert min_jumps(game, max_jump) is not None, f"unsolvable with max_jump {max_jump}: {text}"


def test_bodies_carry_the_game_as_an_array_or_a_digit_string() -> None:
    rng = random.Random(7)
    game = [0, 1, 0, 0]
    as_array = json_body(game, "ada@example.com", 2, False, rng)
    assert as_array == {"clouds": game, "user": "ada@example.com", "max_jump": 2}, f"body {as_array}"
    for _ in range(20):
        as_digits = json_body(game, "ada@example.com", 3, True, rng)
        digits = as_digits["clouds"]
        assert isinstance(digits, str), f"clouds as {type(digits).__name__}: {as_digits}"
        assert [int(c) for c in digits if c.isdigit()] == game, f"digit string {digits!r} is not {game}"
    separators = {digit_string([0, 0], random.Random(seed))[1] for seed in range(50)}
    assert separators == {"0", " ", ","}, f"separators used between digits: {separators}"


def test_every_invalid_case_is_a_distinct_4xx() -> None:
    names = [case.name for case in INVALID]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    for case in INVALID:
        assert case.status in {400, 415, 422}, f"{case.name}: status {case.status}"
        assert case.body, f"{case.name}: empty body"
