"""Inputs the load test sends: what users really post, valid and invalid, with what must come back."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


def clouds(rng: random.Random, n: int, max_jump: int = 2, thunder: float = 0.3) -> list[int]:
    """A solvable game: first and last cloud safe, never max_jump thunderheads in a row."""
    values = [0] * n
    run = 0
    for i in range(1, n - 1):
        if run < max_jump - 1 and rng.random() < thunder:
            values[i] = 1
            run += 1
        else:
            run = 0
    return values


@dataclass(frozen=True)
class Invalid:
    """A request the API must refuse, and the status that counts as success."""

    name: str
    body: bytes
    content_type: str
    status: int


INVALID: list[Invalid] = [
    Invalid("malformed JSON", b'{"clouds": [0, 0', "application/json", 400),
    Invalid("value 2", b'{"clouds": [0, 2, 0]}', "application/json", 422),
    Invalid("boolean cloud", b'{"clouds": [0, true, 0]}', "application/json", 422),
    Invalid("first cloud unsafe", b'{"clouds": [1, 0, 0]}', "application/json", 422),
    Invalid("unknown field", b'{"cloud": [0, 0]}', "application/json", 422),
    Invalid("unreachable", b'{"clouds": [0, 1, 1, 0]}', "application/json", 422),
    Invalid("n mismatch", b"3\n0 0\n", "text/plain", 400),
    Invalid("form post", b"clouds=0,0", "application/x-www-form-urlencoded", 415),
]


def digit_string(values: list[int], rng: random.Random) -> str:
    separator = rng.choice(["", " ", ","])
    return separator.join(str(v) for v in values)


def json_body(values: list[int], user: str, max_jump: int, as_digits: bool, rng: random.Random) -> dict[str, Any]:
    return {"clouds": digit_string(values, rng) if as_digits else values, "user": user, "max_jump": max_jump}
