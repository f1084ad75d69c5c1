"""Bodies that say one thing twice, or more than the API takes: a member given twice is refused
however it is spelled, and a text body's lines, n and number of values are checked before each
value is, with the same specific answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jotc_api.parsing import JotcBody, JumpsBody, parse_json, parse_text
from jotc_api.problems import Problem

MAX_CLOUDS = 1000


def refusal(parse: Any, body: bytes, query: dict[str, str] | None = None, **options: Any) -> tuple[int, str]:
    with pytest.raises(Problem) as raised:
        parse(body, query or {}, MAX_CLOUDS, **options)
    return raised.value.status, raised.value.detail


@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"clouds": [0, 0], "user": "a", "user": "b"}', "user"),
        (b'{"user": "a", "clouds": [0, 0], "user": "a"}', "user"),  # the same value twice too
        (b'{"clouds": [0, 0], "user": "a", "\\u0075ser": "b"}', "user"),  # escaped spelling
        (b'{"clouds": [0, 0], "\\u0075\\u0073\\u0065\\u0072": "a", "user" : "b"}', "user"),
        (b'{"clouds": "00", "clouds": [0, 1, 0]}', "clouds"),
        (b'{"clouds": [0, 0], "max_jump": 2,\n "max_jump"\t:\n3}', "max_jump"),
        (b'{"clouds":[0,0],"max_jump":1,"user":"a","max_\\u006aump":2}', "max_jump"),
    ],
)
def test_a_member_given_twice_is_refused_naming_it(body: bytes, member: str) -> None:
    with pytest.raises(Problem) as raised:
        parse_json(body, {}, MAX_CLOUDS)
    assert raised.value.status == 422
    assert raised.value.kind == "validation"
    assert [(e.field, e.message) for e in raised.value.errors] == [(member, "given more than once")]


def test_post_jotc_refuses_a_member_given_twice_too() -> None:
    with pytest.raises(Problem) as raised:
        parse_json(b'{"clouds": [0, 0], "clouds": [0, 1, 0]}', {}, MAX_CLOUDS, form=JotcBody)
    assert [(e.field, e.message) for e in raised.value.errors] == [("clouds", "given more than once")]


@pytest.mark.parametrize(
    "body",
    [
        b'{"clouds": [0, 0], "user": "user"}',  # a value that spells a member's name
        b'{"clouds": [0, 0], "user": "\\"user\\": \\"b\\""}',  # quotes and colons inside a value
        b'{"clouds": [0, 0], "user": "a\\\\", "max_jump": 2}',  # a value ending in a backslash
        b'{"clouds": [0, 0], "user": "clouds:", "max_jump": 2}',
        b'{"clouds": "0 0", "user": "\\u0075ser"}',
        b'{"clouds":[0,0],"user":"a\\":","max_jump":2}',
    ],
)
def test_members_given_once_are_not_taken_for_repeats(body: bytes) -> None:
    assert parse_json(body, {}, MAX_CLOUDS).clouds == b"\x00\x00"


SPELLINGS = {
    "clouds": ['"clouds"', '"\\u0063louds"', '"cloud\\u0073"'],
    "user": ['"user"', '"\\u0075ser"', '"us\\u0065r"'],
    "max_jump": ['"max_jump"', '"max\\u005fjump"', '"\\u006dax_jump"'],
}
VALUES = {"clouds": ["[0, 0]", '"0 0"', '"00"'], "user": ['"a"', '"user"', '"\\":"'], "max_jump": ["2", "3"]}


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(sorted(SPELLINGS)), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_a_body_is_refused_for_a_repeat_exactly_when_a_member_repeats(members: list[str], rng: Any) -> None:
    """Against the json module's own reading of the members, spelled and spaced every way. (clouds is
    required: a body without it is refused for that before anything else.)"""
    members.insert(rng.randrange(len(members) + 1), "clouds")
    space = ["", " ", "\n", "\t "]
    body = (
        "{"
        + ",".join(
            f"{rng.choice(space)}{rng.choice(SPELLINGS[m])}{rng.choice(space)}:{rng.choice(space)}{rng.choice(VALUES[m])}"
            for m in members
        )
        + "}"
    ).encode()
    names = [name for name, _ in json.loads(body, object_pairs_hook=lambda pairs: pairs)]
    repeated = len(set(names)) < len(names)
    for form in (JumpsBody, JotcBody):
        try:
            parse_json(body, {}, MAX_CLOUDS, form=form)
            refused_for_repeat = False
        except Problem as problem:
            refused_for_repeat = any(e.message == "given more than once" for e in problem.errors)
        if form is JumpsBody or "max_jump" not in names:
            assert refused_for_repeat == repeated, body


# (body, status, detail): the text form's answers, each as specific as the rule it breaks.
TEXT_ANSWERS = [
    (b"", 400, "text/plain body must be two lines (n, then the n clouds); got 0 line(s)"),
    (b"3\n", 400, "text/plain body must be two lines (n, then the n clouds); got 1 line(s)"),
    (b"3\n0 1 0\n0\n", 400, "text/plain body must be two lines (n, then the n clouds); got 3 line(s)"),
    (b"3\n\n0 1 0", 400, "text/plain body must be two lines (n, then the n clouds); got 3 line(s)"),
    (b"\xc3\xa9\n0 0", 400, "text/plain body must be ASCII digits"),
    (b"x\n0 0", 400, "first line must be the number n, got 'x'"),
    (b"1234567890\n0 0", 400, "first line must be the number n, got '1234567890'"),
    (b"3\n0 0", 400, "first line says n = 3 but the second line has 2 values"),
    (b"2\n0 x 0", 400, "first line says n = 2 but the second line has 3 values"),
    (b"3\n0 x 0", 400, "second line: value 1 is 'x', not 0 or 1"),
    (b"3\n0 2 x", 400, "second line: value 2 is 'x', not 0 or 1"),  # every value's spelling before its worth
    (b"3\n0  -1 0", 400, "second line: value 1 is '-1', not 0 or 1"),
    (b"3\n0 1234567890 0", 400, "second line: value 1 is '1234567890', not 0 or 1"),
    (b"3\n0 2 0", 422, "clouds[1]: must be 0 or 1, got 2"),
    (b"3\n0 00 10", 422, "clouds[2]: must be 0 or 1, got 10"),
    (b"1\n0", 422, "clouds: needs at least 2 clouds, got 1"),
    (
        b"3\n1 0 1",
        422,
        "clouds[0]: the first cloud must be 0 (the player starts there); "
        "clouds[2]: the last cloud must be 0 (the goal)",
    ),
]


@pytest.mark.parametrize(("body", "status", "detail"), TEXT_ANSWERS)
def test_text_bodies_are_answered_naming_what_is_wrong(body: bytes, status: int, detail: str) -> None:
    assert refusal(parse_text, body) == (status, detail)


def test_more_values_than_accepted_are_refused_by_their_count() -> None:
    """Counted, not read: a body of half a million values is refused for its count (or for not matching
    n), whatever its values say."""
    values = b" ".join([b"0", b"x"] * 262_144)
    n = str(len(values.split())).encode()
    assert refusal(parse_text, n + b"\n" + values) == (
        422,
        f"clouds: at most {MAX_CLOUDS} clouds are accepted, got {int(n)}",
    )
    assert refusal(parse_text, b"5\n" + values) == (
        400,
        f"first line says n = 5 but the second line has {int(n)} values",
    )


@pytest.mark.parametrize(
    ("body", "clouds"),
    [
        (b"4\n0 0 1 0\n", b"\x00\x00\x01\x00"),
        (b"\r\n4\r\n0 0 1 0\r\n\r\n", b"\x00\x00\x01\x00"),  # CRLF, blank lines around
        (b"  4  \n\t0\t0  1 0\x0b", b"\x00\x00\x01\x00"),  # any white space between values
        (b"4\r0 0 1 0", b"\x00\x00\x01\x00"),  # a lone CR ends a line, as str.splitlines() says
        (b"4\x0c0 0 1 0", b"\x00\x00\x01\x00"),  # so does a form feed
        (b"4\n0 0\x1f1 0", b"\x00\x00\x01\x00"),  # and U+001F separates values, as str.split() says
        (b"4\n00 0 01 000", b"\x00\x00\x01\x00"),  # leading zeros
    ],
)
def test_text_bodies_in_every_accepted_spelling(body: bytes, clouds: bytes) -> None:
    assert parse_text(body, {}, MAX_CLOUDS).clouds == clouds


@pytest.mark.parametrize(
    ("clouds", "detail"),
    [
        ('"' + "0" * 5000 + "x" + '"', "clouds: must be a string of 0 and 1 digits; cloud 5000 is 'x'"),
        ('"00x0"', "clouds: must be a string of 0 and 1 digits; cloud 2 is 'x'"),
        ('"00\u00e90"', "clouds: must be a string of 0 and 1 digits; cloud 2 is '\u00e9'"),
        ('"0 0 x 0"', "clouds: must be a string of 0 and 1 digits; cloud 2 is 'x'"),
        ('""', "clouds: must be a string of 0 and 1 digits; cloud 0 is 'nothing'"),
    ],
)
def test_digit_strings_are_answered_naming_the_cloud(clouds: str, detail: str) -> None:
    assert refusal(parse_json, f'{{"clouds": {clouds}}}'.encode()) == (422, detail)
