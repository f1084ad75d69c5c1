"""Fuzzing the body parsers: whatever the bytes, the answer is a valid input or a 400/422 Problem."""

from __future__ import annotations

import json
import random
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from jotc_api.parsing import USER_MAX_LENGTH, JumpInput, check_user, parse_json, parse_text, unseen
from jotc_api.problems import FieldError, Problem

MAX_CLOUDS = 500
# Characters a body's strings are made of: the parsers' own alphabet, whitespace and controls,
# quotes and escapes, and characters from across Unicode (no lone surrogates: JSON text cannot hold them).
CHARACTERS = '01 ,x-+.eE\n\t\r\x00\x0b"\\/abcXYZ\u00e9\u00a0\u200b\u202e\u2028\ufeff\U0001f600'


def text(rng: random.Random, max_size: int) -> str:
    def character() -> str:
        if rng.random() < 0.8:
            return rng.choice(CHARACTERS)
        point = rng.randrange(0x20, 0x10FFFF)
        return chr(point) if not 0xD800 <= point <= 0xDFFF else "?"

    return "".join(character() for _ in range(rng.randrange(max_size + 1)))


def json_value(rng: random.Random, depth: int = 0) -> object:
    """Any JSON value, nested up to four levels: what a hostile client might send in a field."""
    kind = rng.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, 2, -1, 3, 1000, 1001, 2**31, -(2**63), 2**64, 10**30, rng.randint(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.0, 2.5, 1e308, -1e-308, rng.uniform(-1e6, 1e6)])
    if kind == 4:
        return text(rng, 20)
    if kind == 5:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(9))]
    return {text(rng, 10): json_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def body(seed: int) -> dict[str, object]:
    """A request body from a seed: each field present or not, well-typed, near-miss or any JSON value.
    (Built from a seed because Hypothesis's recursive strategies spent seconds on each hundred.)"""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    made: dict[str, object] = {}
    if rng.random() < 0.7:
        made["clouds"] = rng.choice(
            [
                lambda: [rng.randint(-2, 3) for _ in range(rng.randrange(41))],
                lambda: "".join(rng.choice("01 ,x") for _ in range(rng.randrange(41))),
                lambda: json_value(rng),
            ]
        )()
    if rng.random() < 0.5:
        made["user"] = text(rng, 400) if rng.random() < 0.5 else json_value(rng)
    if rng.random() < 0.5:
        made["max_jump"] = rng.randint(-5, 1100) if rng.random() < 0.5 else json_value(rng)
    if rng.random() < 0.3:
        made["extra"] = json_value(rng)
    return made


def check(parse: object, body: bytes, query: dict[str, str]) -> None:
    result: JumpInput | Problem
    try:
        result = parse(body, query, MAX_CLOUDS)  # type: ignore[operator]
    except Problem as problem:
        result = problem
    if isinstance(result, Problem):
        assert result.status in {400, 422}
        assert result.detail
        assert json.loads(result.body())["status"] == result.status
        return
    assert isinstance(result, JumpInput)
    assert 2 <= len(result.clouds) <= MAX_CLOUDS
    assert set(result.clouds) <= {0, 1}
    assert result.clouds[0] == result.clouds[-1] == 0
    assert 1 <= result.max_jump <= 1000
    assert 1 <= len(result.user) <= 320


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_json(body: bytes) -> None:
    check(parse_json, body, {})


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2**64))
def test_structured_json_bodies(seed: int) -> None:
    check(parse_json, json.dumps(body(seed)).encode(), {})


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.dictionaries(st.sampled_from(["user", "max_jump", "other"]), st.text(max_size=10)))
def test_arbitrary_bytes_as_text(body: bytes, query: dict[str, str]) -> None:
    check(parse_text, body, query)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "2", " ", "\n", "x", "-1", "01"]), max_size=60))
def test_near_miss_text_bodies(tokens: list[str]) -> None:
    values = "".join(tokens)
    check(parse_text, f"{len(values.split())}\n{values}\n".encode(), {})


# What a name's rules turn on: joiners, marks, variation selectors, fillers, spaces, emoji, letters
# of scripts that need joiners, controls and printable ASCII.
NAME_PARTS = (
    "a \u200d\u200c\u0301\u0323\u094d\u0915\u0645\ufe0f\U000e0100\u3164\u00a0\u3000\U0001f469\U0001f3fd\u2764\x1b"
)


@given(
    st.text(max_size=40)
    | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40)
    | st.text(alphabet=NAME_PARTS, max_size=12)
)
@settings(max_examples=600, deadline=None)
def test_a_user_name_is_its_nfc_form_and_refused_exactly_when_the_full_rule_refuses_it(name: str) -> None:
    """The printable-ASCII short cut in check_user decides as the per-character rule does."""
    normal = unicodedata.normalize("NFC", name.strip())
    errors: list[FieldError] = []
    assert check_user(name, errors) == normal
    assert bool(errors) == (not 1 <= len(normal) <= USER_MAX_LENGTH or unseen(normal) is not None)
