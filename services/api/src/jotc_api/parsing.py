"""From request bytes to a validated JumpInput, exactly as the contract's rules say.

Two wire forms: JSON (``clouds`` as an array of 0/1 or a digit string) and
text/plain (HackerRank's input file, ``user`` and ``max_jump`` in the query).
Parse errors are 400, broken rules 422 naming each field (a JSON member given
twice included); nothing here can raise anything but a Problem. Counts and
lengths are checked before anything is done per value, so a refused body costs
less than the largest valid one. ``check_user`` is the one rule for a user
name wherever one arrives, here or in the admin API: one spelling (NFC) per
name, and nothing that renders as nothing or as another name.
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
# The longest run of combining marks a name may hold. Real writing stacks a few on a letter
# (Vietnamese two, pointed Hebrew with cantillation four or five, Tibetan stacks a few more);
# "zalgo" text stacks hundreds. Unicode's stream-safe format allows 30.
USER_MAX_MARKS = 8
# A character's canonical decomposition is at most 4 characters, so NFC shortens a name at most
# fourfold: a longer one cannot fit, and is refused before normalising, whose canonical reordering
# is quadratic in a run of combining marks.
NFC_SHRINKS_AT_MOST = 4

# One person, one name: a name is stored, compared and shown in NFC, and nothing in it may render
# as nothing, hide or reorder what an administrator reads, or make it look like another name.
# Control and format characters (Cc, Cf: bidirectional overrides and isolates, zero-width spaces,
# BOM, soft hyphen, tag characters) and line and paragraph separators (Zl, Zp) are refused; the
# two joiners are Cf too, and are kept only where they change what is seen (joiner_shows).
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
ZWNJ, ZWJ = "\u200c", "\u200d"
JOINERS = frozenset({ZWNJ, ZWJ})
# Characters that render as nothing although they are letters, marks or symbols: the combining
# grapheme joiner, the Hangul fillers, the Khmer inherent vowels, the braille blank, the Khitan
# filler and the musical null notehead.
BLANK = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0\U00016fe4\U0001d159")
# Every other space (U+00A0, U+2000-U+200A, U+202F, ...) looks like one of these two: a second
# spelling of a name. The ideographic space is wider, and separates family and given names in CJK.
PLAIN_SPACES = frozenset(" \u3000")
VIRAMA = 9  # the canonical combining class of the Indic viramas (Devanagari U+094D, Malayalam U+0D4D, ...)
# Scripts whose letters join one another, so that a ZWNJ or ZWJ between two of them changes their
# shapes: the first words of their characters' names.
JOINING_SCRIPTS = (
    "ARABIC ",
    "SYRIAC ",
    "NKO ",
    "MANDAIC ",
    "MONGOLIAN ",
    "PHAGS-PA ",
    "MANICHAEAN ",
    "PSALTER PAHLAVI ",
    "HANIFI ROHINGYA ",
    "SOGDIAN ",
    "OLD UYGHUR ",
    "CHORASMIAN ",
    "ADLAM ",
)
EMOJI_MODIFIERS = ("\U0001f3fb", "\U0001f3ff")  # the skin tones, first and last
DIGITS_TO_VALUES = bytes.maketrans(b"01", b"\x00\x01")
# A text body's bytes as str.splitlines() and str.split() read ASCII: every line break a \n (a \r\n
# is made one first), every other white space a space.
OTHER_SPACING = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\t", b"\x1f")
TEXT_SPACING = bytes.maketrans(b"".join(OTHER_SPACING), b"\n\n\n\n\n\n  ")
SPACE_OR_NOT = bytes(0x20 if byte == 0x20 else 0x78 for byte in range(256))  # a space, or an x

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
        description=f"Who asked; trimmed and NFC-normalised, then 1 to {USER_MAX_LENGTH} characters without "
        "control or formatting characters, text-direction overrides, or anything that renders as nothing "
        f'(Hangul fillers, stray joiners, more than {USER_MAX_MARKS} stacked marks); default "{DEFAULT_USER}"',
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
# A member's name: a string then a colon. The string's closing quote is not escaped (one after an
# escaped backslash would end a name with a backslash in it, which no field has), and a field's name
# is at most 48 characters however spelled (8 characters, each at most a six-character \\u escape),
# so a search that starts at a value's opening quote gives up after 48 characters.
QUOTED_FIELDS = tuple(f'"{name}"'.encode() for name in JumpsBody.__struct_fields__)  # /jotc's are a subset
MEMBER_NAME = re.compile(rb'"([^"]{1,48}+)(?<!\\)"\s*+:')


def parse_json(body: bytes, query: Mapping[str, str], max_clouds: int, form: type[JotcBody] = JumpsBody) -> JumpInput:
    if query:
        raise unknown_query(query, "JSON requests carry their fields in the body")
    try:
        decoded = DECODERS[form].decode(body)
    except msgspec.ValidationError as exc:
        raise validation_problem([msgspec_field_error(str(exc), form)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-body", f"body is not valid UTF-8 JSON: {exc}") from None
    if repeated := repeated_member(body):
        raise validation_problem([FieldError(repeated, "given more than once")])
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


def repeated_member(decoded: bytes) -> str | None:
    """The first member a body gives twice, however spelled (``"\\u0075ser"`` is ``user``): msgspec
    keeps the last, and the API refuses a repeated member as it refuses a repeated header or query
    parameter. Only for a body msgspec decoded into a form: valid JSON, one object of known fields
    and no nested object, so every string followed by a colon is one of its members' names."""
    if b"\\" not in decoded:
        # No escape anywhere, so a name is spelled only one way: if each field's quoted name occurs
        # at most once, no member is given twice (the usual body, without a scan).
        for quoted in QUOTED_FIELDS:
            if decoded.count(quoted) > 1:
                break
        else:
            return None
    names = MEMBER_NAME.findall(decoded)
    if len(set(names)) == len(names) and b"\\" not in b"".join(names):
        return None
    seen = set()
    for raw in names:
        name = msgspec.json.decode(b'"' + raw + b'"', type=str)
        if name in seen:
            return name
        seen.add(name)
    return None  # two spellings of different names


def parse_text(body: bytes, query: Mapping[str, str], max_clouds: int) -> JumpInput:
    """HackerRank format: first line n, second line n space-separated 0/1 values. The lines, n
    against the limits and the number of values are checked before anything is done per value,
    and that is done on the bytes: a refused body costs less than the largest valid one."""
    unknown = {key: value for key, value in query.items() if key not in {"user", "max_jump"}}
    if unknown:
        raise unknown_query(unknown, "text/plain requests accept only user and max_jump")
    if not body.isascii():
        raise Problem(400, "malformed-body", "text/plain body must be ASCII digits")
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
    if any(space in body for space in OTHER_SPACING):
        body = body.translate(TEXT_SPACING)
    text = body.strip()
    count_line, _, values = text.partition(b"\n")
    if not values or b"\n" in values:
        lines = text.count(b"\n") + 1 if text else 0
        raise Problem(
            400,
            "malformed-body",
            f"text/plain body must be two lines (n, then the n clouds); got {lines} line(s)",
        )
    count_line = count_line.strip()
    if not count_line.isdigit() or len(count_line) > 9:
        raise Problem(400, "malformed-body", f"first line must be the number n, got {clip(count_line.decode())!r}")
    n = int(count_line)
    errors: list[FieldError] = []
    clouds = b""
    if check_count(n, max_clouds, errors):
        values = values.strip()
        digits: bytes | None = None
        every_other = values[::2]
        if len(values) % 2 and values[1::2] == b" " * (len(values) // 2) and b" " not in every_other:
            digits = every_other  # "0 0 1 0": one character a value, single spaces
            found = len(digits)
        else:
            found = values.translate(SPACE_OR_NOT).count(b" x") + 1  # a value starts each run of non-spaces
        if found != n:
            raise Problem(400, "malformed-body", f"first line says n = {n} but the second line has {found} values")
        if digits is None:
            clouds = clouds_from_tokens(values.split(), max_clouds, errors)
        else:
            clouds = clouds_from_value_digits(digits, errors)
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


def clouds_from_tokens(tokens: list[bytes], max_clouds: int, errors: list[FieldError]) -> bytes:
    """A second line's values, spaced unevenly or of several digits ("01" is 1, "10" is ten); their
    number was checked."""
    digits = b"".join(tokens)
    if len(digits) == len(tokens):
        return clouds_from_value_digits(digits, errors)
    for index, token in enumerate(tokens):
        if not token.isdigit() or len(token) > 9:
            raise Problem(400, "malformed-body", f"second line: value {index} is {token[:20].decode()!r}, not 0 or 1")
    return clouds_from_array([int(token) for token in tokens], max_clouds, errors)


def clouds_from_value_digits(digits: bytes, errors: list[FieldError]) -> bytes:
    """A second line's values of one character each, as one string of them; their number was checked."""
    if digits.translate(None, b"0123456789"):
        index = len(digits) - len(digits.lstrip(b"0123456789"))
        value = digits[index : index + 1].decode()
        raise Problem(400, "malformed-body", f"second line: value {index} is {value!r}, not 0 or 1")
    if digits.translate(None, b"01"):
        index = len(digits) - len(digits.lstrip(b"01"))
        errors.append(FieldError(f"clouds[{index}]", f"must be 0 or 1, got {digits[index : index + 1].decode()}"))
        return b""
    clouds = digits.translate(DIGITS_TO_VALUES)
    check_ends(clouds, errors)
    return clouds


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
        position = len(digits) - len(digits.lstrip("01"))
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
    """The one rule for a user name, wherever one arrives (a body, a query, an admin URL or filter):
    trimmed, then NFC (José typed precomposed or with a combining accent is one user), then 1 to
    USER_MAX_LENGTH characters of which none renders as nothing or as another name. Returns the
    name as it is stored, compared, erased and answered."""
    if user is None:
        return DEFAULT_USER
    name = user.strip()
    # Printable ASCII is already NFC and holds nothing the per-character rules refuse: most names
    # skip both.
    printable_ascii = name.isascii() and name.isprintable()
    if not printable_ascii and len(name) <= NFC_SHRINKS_AT_MOST * USER_MAX_LENGTH:
        name = unicodedata.normalize("NFC", name)
    if not 1 <= len(name) <= USER_MAX_LENGTH:
        errors.append(FieldError("user", f"must be 1 to {USER_MAX_LENGTH} characters after trimming, got {len(name)}"))
    elif not printable_ascii and (why := unseen(name)):
        errors.append(FieldError("user", why))
    return name


def unseen(name: str) -> str | None:
    """Why a trimmed NFC name would render blank, hide part of itself, or look like another name;
    None when it would not."""
    marks = 0
    for at, character in enumerate(name):
        category = unicodedata.category(character)
        if character in JOINERS:
            if not joiner_shows(name, at):
                return (
                    f"must not contain {described(character)} here: it is kept only between two emoji, next to "
                    "a virama, or between two letters of a joining script such as Arabic; elsewhere it "
                    "renders as nothing"
                )
        elif category in HIDDEN:
            return (
                "must not contain control or formatting characters (NUL, newlines, escapes, text-direction "
                f"overrides, zero-width spaces); found {described(character)}"
            )
        elif character in BLANK or category == "Cs" or (category == "Cn" and renders_as_nothing(character)):
            return (
                f"must not contain {described(character)}: it renders as nothing, so the name would look "
                "blank or like another"
            )
        elif category == "Zs" and character not in PLAIN_SPACES:
            return (
                f"must separate words with plain spaces: {described(character)} looks like one, and would "
                "make a second spelling of the name"
            )
        elif variation_selector(character) and not (at and unicodedata.category(name[at - 1])[0] in "LNPS"):
            return f"must not contain {described(character)} here: it must follow the character it styles"
        marks = marks + 1 if category[0] == "M" else 0
        if marks > USER_MAX_MARKS:
            return f"must not stack more than {USER_MAX_MARKS} combining marks on one character"
    return None


def joiner_shows(name: str, at: int) -> bool:
    """Whether the ZWJ or ZWNJ at name[at] changes what is seen: in an emoji sequence (ZWJ: woman,
    ZWJ, laptop), after a virama (Indic conjuncts: Devanagari U+0915 U+094D ZWJ U+0937), before a
    virama after a letter (Bengali ra-phala), or between letters of a script whose letters join
    (Persian writes a ZWNJ inside many words). Anywhere else it renders as nothing: a name with one
    would look like the name without it."""
    if at == 0 or at == len(name) - 1:
        return False
    before, after = name[at - 1], name[at + 1]
    if unicodedata.combining(before) == VIRAMA:
        return unicodedata.category(after)[0] == "L"
    if name[at] == ZWJ and unicodedata.combining(after) == VIRAMA:
        return unicodedata.category(before)[0] == "L"
    if unicodedata.name(before, "").startswith(JOINING_SCRIPTS) and unicodedata.name(after, "").startswith(
        JOINING_SCRIPTS
    ):
        return True
    return name[at] == ZWJ and emoji_ends_at(name, at - 1) and unicodedata.category(after) == "So"


def emoji_ends_at(name: str, at: int) -> bool:
    """Whether name[at] ends an emoji: a symbol, perhaps followed by its presentation selector or a skin tone."""
    while at > 0 and (name[at] == "\ufe0f" or EMOJI_MODIFIERS[0] <= name[at] <= EMOJI_MODIFIERS[1]):
        at -= 1
    return unicodedata.category(name[at]) == "So"


def variation_selector(character: str) -> bool:
    return (
        "\ufe00" <= character <= "\ufe0f"
        or "\U000e0100" <= character <= "\U000e01ef"
        or "\u180b" <= character <= "\u180d"
        or character == "\u180f"
    )


def renders_as_nothing(unassigned: str) -> bool:
    """Unassigned code points that are default-ignorable (whatever they become, they render as
    nothing), and the noncharacters."""
    point = ord(unassigned)
    return (
        point == 0x2065
        or 0xFFF0 <= point <= 0xFFF8
        or 0xE0000 <= point <= 0xE0FFF
        or 0xFDD0 <= point <= 0xFDEF
        or point & 0xFFFE == 0xFFFE
    )


def described(character: str) -> str:
    """U+3164 HANGUL FILLER: how a message names a character it cannot show."""
    name = unicodedata.name(character, "")
    return f"U+{ord(character):04X} {name}" if name else f"U+{ord(character):04X}"


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
