"""From request bytes to a validated JumpInput, exactly as the contract's rules say.

Two wire forms: JSON (``clouds`` as an array of 0/1 or a digit string) and
text/plain (HackerRank's input file, ``user`` and ``max_jump`` in the query).
Parse errors are 400, broken rules 422 naming each field; nothing here can
raise anything but a Problem.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

from jotc_api.problems import FieldError, Problem, clip, validation_problem

DEFAULT_USER = "anonymous"
DEFAULT_MAX_JUMP = 2
MAX_JUMP_LIMIT = 1000
USER_MAX_LENGTH = 320

# Names are shown back to administrators, so nothing that can hide or reorder what they read:
# control characters (Cc), format characters (Cf: bidirectional overrides and isolates, zero-width
# spaces, BOM, tag characters), line and paragraph separators (Zl, Zp). The zero-width joiners are
# kept: emoji sequences and several scripts need them.
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
JOINERS = frozenset("\u200c\u200d")
DIGITS_TO_VALUES = bytes.maketrans(b"01", b"\x00\x01")
NOT_A_VALUE = bytes(range(2, 256))


# What the structs below say beyond their types is for the OpenAPI document (extra_json_schema);
# the checks further down enforce it, with messages that name the field and the rule.
CLOUDS_PATTERN = r"^\s*(?:0[01]*0|0(?: [01])* 0|0(?:,[01])*,0)\s*$"
CloudArray = Annotated[
    list[Annotated[int, Meta(extra_json_schema={"enum": [0, 1]})]],
    Meta(
        description="0 = cumulus (safe), 1 = thunderhead; the first and last cloud must be 0; "
        "at most JOTC_MAX_CLOUDS clouds",
        extra_json_schema={"minItems": 2, "prefixItems": [{"const": 0}]},
    ),
]
CloudDigits = Annotated[
    str,
    Meta(
        description='0/1 digits, all separated by single spaces or all by commas, or not at all: "0010", '
        '"0 0 1 0", "0,0,1,0"; first and last 0; at most JOTC_MAX_CLOUDS clouds',
        extra_json_schema={"pattern": CLOUDS_PATTERN},
    ),
]
User = Annotated[
    str,
    Meta(
        description=f"Who asked; trimmed, then 1 to {USER_MAX_LENGTH} characters without control characters or "
        f'text-direction overrides; default "{DEFAULT_USER}"',
        extra_json_schema={"minLength": 1, "pattern": r"^[^\x00]*[^\x00\s][^\x00]*$"},
    ),
]
MaxJump = Annotated[
    int,
    Meta(description="The longest jump allowed", extra_json_schema={"minimum": 1, "maximum": MAX_JUMP_LIMIT}),
]


class JumpInput(msgspec.Struct, frozen=True):
    clouds: bytes  # one byte per cloud: 0 cumulus, 1 thunderhead
    user: str
    max_jump: int


class JotcBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /jotc: the classic game (max_jump 2)."""

    clouds: CloudArray | CloudDigits
    user: User = DEFAULT_USER


class JumpsBody(JotcBody, forbid_unknown_fields=True):
    """POST /jumps (JSON)."""

    max_jump: MaxJump = DEFAULT_MAX_JUMP


DECODERS = {body: msgspec.json.Decoder(body) for body in (JotcBody, JumpsBody)}
MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
MISSING_FIELD = re.compile(r"Object missing required field `(?P<name>[^`]*)`")


def parse_json(body: bytes, query: Mapping[str, str], max_clouds: int, form: type[JotcBody] = JumpsBody) -> JumpInput:
    if query:
        raise unknown_query(query, "JSON requests carry their fields in the body")
    try:
        decoded = DECODERS[form].decode(body)
    except msgspec.ValidationError as exc:
        raise validation_problem([msgspec_field_error(str(exc), form)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-body", f"body is not valid UTF-8 JSON: {exc}") from None
    errors: list[FieldError] = []
    if isinstance(decoded.clouds, str):
        clouds = clouds_from_digits(decoded.clouds, max_clouds, errors)
    else:
        clouds = clouds_from_array(decoded.clouds, max_clouds, errors)
    user = check_user(decoded.user, errors)
    max_jump = decoded.max_jump if isinstance(decoded, JumpsBody) else DEFAULT_MAX_JUMP
    check_max_jump(max_jump, errors)
    if errors:
        raise validation_problem(errors)
    return JumpInput(clouds, user, max_jump)


def parse_text(body: bytes, query: Mapping[str, str], max_clouds: int) -> JumpInput:
    """HackerRank format: first line n, second line n space-separated 0/1 values."""
    unknown = {key: value for key, value in query.items() if key not in {"user", "max_jump"}}
    if unknown:
        raise unknown_query(unknown, "text/plain requests accept only user and max_jump")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise Problem(400, "malformed-body", "text/plain body must be ASCII digits") from None
    lines = text.strip().splitlines()
    if len(lines) != 2:
        raise Problem(
            400,
            "malformed-body",
            f"text/plain body must be two lines (n, then the n clouds); got {len(lines)} line(s)",
        )
    count_line, values_line = lines[0].strip(), lines[1].split()
    if not count_line.isdigit() or len(count_line) > 9:
        raise Problem(400, "malformed-body", f"first line must be the number n, got {clip(count_line)!r}")
    for index, token in enumerate(values_line):
        if not token.isdigit() or len(token) > 9:
            raise Problem(400, "malformed-body", f"second line: value {index} is {token[:20]!r}, not 0 or 1")
    if int(count_line) != len(values_line):
        raise Problem(
            400,
            "malformed-body",
            f"first line says n = {int(count_line)} but the second line has {len(values_line)} values",
        )
    errors: list[FieldError] = []
    clouds = clouds_from_array([int(token) for token in values_line], max_clouds, errors)
    user = check_user(query.get("user"), errors)
    max_jump = DEFAULT_MAX_JUMP
    if "max_jump" in query:
        raw = query["max_jump"].strip()
        if re.fullmatch(r"-?[0-9]{1,9}", raw):
            max_jump = int(raw)
            check_max_jump(max_jump, errors)
        else:
            errors.append(FieldError("max_jump", f"must be a whole number, got {raw[:20]!r}"))
    if errors:
        raise validation_problem(errors)
    return JumpInput(clouds, user, max_jump)


def clouds_from_array(values: list[int], max_clouds: int, errors: list[FieldError]) -> bytes:
    if not check_count(len(values), max_clouds, errors):
        return b""
    try:
        clouds = bytes(values)
    except ValueError:
        clouds = b""
    if len(clouds) != len(values) or clouds.translate(None, b"\x00\x01"):
        index, value = next((i, v) for i, v in enumerate(values) if v not in (0, 1))
        errors.append(FieldError(f"clouds[{index}]", f"must be 0 or 1, got {value}"))
        return b""
    check_ends(clouds, errors)
    return clouds


def clouds_from_digits(text: str, max_clouds: int, errors: list[FieldError]) -> bytes:
    digits = text.strip()
    if len(digits) > 1 and digits[1] in " ,":
        separator = digits[1]
        if len(digits) % 2 == 0 or digits[1::2].strip(separator):
            errors.append(
                FieldError(
                    "clouds",
                    f"digits must be separated by single {'spaces' if separator == ' ' else 'commas'}"
                    ' throughout, like "0 0 1 0", "0,0,1,0" or "0010"',
                )
            )
            return b""
        digits = digits[::2]
    try:
        raw = digits.encode("ascii")
    except UnicodeEncodeError:
        raw = b"\xff"
    bad = raw.translate(None, b"01")
    if bad or not raw:
        position = next((i for i, ch in enumerate(digits) if ch not in "01"), 0)
        shown = digits[position : position + 1] or "nothing"
        errors.append(
            FieldError(
                "clouds",
                f"must be a string of 0 and 1 digits; cloud {position} is {shown!r}",
            )
        )
        return b""
    if not check_count(len(raw), max_clouds, errors):
        return b""
    clouds = raw.translate(DIGITS_TO_VALUES)
    check_ends(clouds, errors)
    return clouds


def check_count(n: int, max_clouds: int, errors: list[FieldError]) -> bool:
    if n < 2:
        errors.append(FieldError("clouds", f"needs at least 2 clouds, got {n}"))
        return False
    if n > max_clouds:
        errors.append(FieldError("clouds", f"at most {max_clouds} clouds are accepted, got {n}"))
        return False
    return True


def check_ends(clouds: bytes, errors: list[FieldError]) -> None:
    if clouds[0] != 0:
        errors.append(FieldError("clouds[0]", "the first cloud must be 0 (the player starts there)"))
    if clouds[-1] != 0:
        errors.append(FieldError(f"clouds[{len(clouds) - 1}]", "the last cloud must be 0 (the goal)"))


def check_user(user: str | None, errors: list[FieldError]) -> str:
    """The one rule for a user name, wherever one arrives (a body, a query, an admin URL)."""
    if user is None:
        return DEFAULT_USER
    trimmed = user.strip()
    # Printable ASCII holds none of them: most names skip the look-up per character.
    visible_ascii = trimmed.isascii() and trimmed.isprintable()
    if not visible_ascii and any(
        unicodedata.category(character) in HIDDEN and character not in JOINERS for character in trimmed
    ):
        errors.append(
            FieldError(
                "user", "must not contain control characters (NUL, newlines, escapes) or text-direction overrides"
            )
        )
    elif not 1 <= len(trimmed) <= USER_MAX_LENGTH:
        errors.append(
            FieldError(
                "user",
                f"must be 1 to {USER_MAX_LENGTH} characters after trimming, got {len(trimmed)}",
            )
        )
    return trimmed


def check_max_jump(max_jump: int, errors: list[FieldError]) -> None:
    if not 1 <= max_jump <= MAX_JUMP_LIMIT:
        errors.append(FieldError("max_jump", f"must be between 1 and {MAX_JUMP_LIMIT}, got {max_jump}"))


def msgspec_field_error(message: str, form: type[JotcBody]) -> FieldError:
    """msgspec says "Expected `int`, got `str` - at `$.clouds[3]`"; name the field plainly."""
    if match := UNKNOWN_FIELD.search(message):
        accepted = ", ".join(form.__struct_fields__)
        return FieldError(match["name"], f"unknown field; accepted fields are {accepted}")
    if match := MISSING_FIELD.search(message):
        return FieldError(match["name"], "is required")
    path = ""
    if match := MSGSPEC_PATH.search(message):
        path = match["path"].lstrip(".")
        message = message[: match.start()]
    message = message.replace("`", "")
    if path == "clouds":
        message = "must be an array of 0 and 1, or a string of 0/1 digits"
    return FieldError(path or "body", message[:1].lower() + message[1:])


def unknown_query(query: Mapping[str, str], why: str) -> Problem:
    errors = [FieldError(key, f"unknown query parameter; {why}") for key in sorted(query)]
    return validation_problem(errors)
