"""Fuzzing the body parsers: whatever the bytes, the answer is a valid input or a 400/422 Problem."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from jotc_api.parsing import JumpInput, parse_json, parse_text
from jotc_api.problems import Problem

MAX_CLOUDS = 500
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "clouds": st.one_of(
            st.lists(st.integers(-2, 3), max_size=40), st.text(alphabet="01 ,x", max_size=40), json_values
        ),
        "user": st.one_of(st.text(max_size=400), json_values),
        "max_jump": st.one_of(st.integers(-5, 1100), json_values),
        "extra": json_values,
    },
)


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
@given(bodies)
def test_structured_json_bodies(body: dict[str, object]) -> None:
    check(parse_json, json.dumps(body).encode(), {})


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.dictionaries(st.sampled_from(["user", "max_jump", "other"]), st.text(max_size=10)))
def test_arbitrary_bytes_as_text(body: bytes, query: dict[str, str]) -> None:
    check(parse_text, body, query)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "2", " ", "\n", "x", "-1", "01"]), max_size=60))
def test_near_miss_text_bodies(tokens: list[str]) -> None:
    values = "".join(tokens)
    check(parse_text, f"{len(values.split())}\n{values}\n".encode(), {})
