"""User names: one spelling per person (NFC), and nothing that renders as nothing or as another name.

check_user is the rule wherever a name arrives (a JSON body, the text form's query, the admin API's
path and filter), so testing it here tests every entry point's rule; tests/system/test_hostile_input.py
shows the same through the real server."""

from __future__ import annotations

import unicodedata

import pytest

from jotc_api.parsing import USER_MAX_LENGTH, USER_MAX_MARKS, check_user, parse_json, parse_text
from jotc_api.problems import FieldError, Problem

# Real names and words in scripts across Unicode, several of which need a joiner, a variation
# selector or stacked marks: every one of them is kept exactly as written (it is already NFC).
KEPT = [
    "ada@example.com",
    "Zoë Ødegård-Šimić",
    "Nguyễn Văn Ánh",  # Vietnamese: two marks on a letter
    "Ελένη Παπαδοπούλου",
    "Дмитрий Шостакович",
    "עִבְרִית",  # pointed Hebrew
    "מְשֶׁה",
    "العربية",
    "می\u200cخواهم",  # noqa: RUF001 - Persian: a ZWNJ inside the word
    "نامه\u200cها",  # noqa: RUF001 - Persian
    "ܫܠܡܐ",  # Syriac
    "हिन्दी",
    "क्\u200dष",  # Devanagari: ZWJ after a virama (half form)
    "क्\u200cष",  # ZWNJ after a virama (explicit virama)
    "ශ්\u200dරී ලංකා",  # Sinhala: ZWJ after al-lakuna
    "র\u200d্যাব",  # Bengali ra-phala: ZWJ between ra and the virama
    "ന്\u200dറ",  # Malayalam
    "தமிழ்",
    "ಕನ್ನಡ",
    "ประเทศไทย",
    "ພາສາລາວ",
    "ភាសាខ្មែរ",
    "မြန်မာ",
    "བོད་ཡིག",
    "བསྒྲུབས",  # Tibetan stack
    "ქართული",
    "Հայերեն",
    "አማርኛ",
    "ᏣᎳᎩ",
    "한국어",
    "山田\u3000太郎",  # the ideographic space between family and given names
    "王小明",
    "やまだ たろう",
    "葛\U000e0100城",  # an ideographic variation sequence
    "ᠮᠣᠩᠭᠣᠯ",  # Mongolian
    "ߒߞߏ",  # N'Ko
    "𞤀𞤣𞤤𞤢𞤥",  # Adlam
    "\U0001f469\u200d\U0001f4bb",  # woman technologist
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family
    "\U0001f469\U0001f3fd\u200d\U0001f4bb",  # with a skin tone
    "\u2764\ufe0f\u200d\U0001f525",  # heart on fire: ZWJ after the emoji's presentation selector
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f9d4\u200d\u2642\ufe0f",
    "\U0001f3c3\u200d\u2640\ufe0f\u200d\u27a1\ufe0f",
    "1\ufe0f\u20e3 and #\ufe0f\u20e3",  # keycaps
    "\U0001f1eb\U0001f1f7",  # a flag from regional indicators
    "q" + "\u0301" * USER_MAX_MARKS,  # as many marks as allowed on one letter (no precomposed q with acute)
]


@pytest.mark.parametrize("name", KEPT)
def test_real_names_are_kept_as_written(name: str) -> None:
    errors: list[FieldError] = []
    assert check_user(f"  {name} ", errors) == name
    assert errors == []
    assert unicodedata.is_normalized("NFC", name)


# (name, what the message names): each renders blank, hides part of itself, or looks like another name.
REFUSED = [
    ("\u3164", "U+3164 HANGUL FILLER"),
    ("ada\u3164", "U+3164"),
    ("\u115f\u1160", "U+115F HANGUL CHOSEONG FILLER"),
    ("a\uffa0b", "U+FFA0 HALFWIDTH HANGUL FILLER"),
    ("\u2800", "U+2800 BRAILLE PATTERN BLANK"),
    ("ada\u2800", "U+2800"),
    ("ad\u034fmin", "U+034F COMBINING GRAPHEME JOINER"),
    ("a\u17b4", "U+17B4 KHMER VOWEL INHERENT AQ"),
    ("a\U0001d159", "U+1D159 MUSICAL SYMBOL NULL NOTEHEAD"),
    ("\u200d", "U+200D ZERO WIDTH JOINER"),  # lone
    ("\u200dada", "U+200D"),  # leading
    ("ada\u200d", "U+200D"),  # trailing (inside the name: a trailing space is trimmed first)
    ("ada\u200d bob", "U+200D"),  # trailing a word
    ("ad\u200dmin", "U+200D"),  # between two Latin letters it changes nothing: "admin" again
    ("ad\u200cmin", "U+200C ZERO WIDTH NON-JOINER"),
    ("\U0001f469\u200d\u200d\U0001f4bb", "U+200D"),  # doubled
    ("\u0645\u200c\u200c\u0646", "U+200C"),  # doubled in Arabic script
    ("\u0645\u200c a", "U+200C"),  # before a space
    ("\ufe0f", "U+FE0F VARIATION SELECTOR-16"),  # a variation selector standing alone
    ("ada \ufe0f", "U+FE0F"),  # after a space
    ("\u2764\ufe0f\ufe0f", "U+FE0F"),  # after another
    ("q\u0301\ufe0e", "U+FE0E"),  # after a mark
    ("\U000e0100ada", "U+E0100 VARIATION SELECTOR-17"),
    ("a\u180eb", "U+180E MONGOLIAN VOWEL SEPARATOR"),  # a format character
    ("ada\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A"),
    ("ad\u200bmin", "U+200B ZERO WIDTH SPACE"),
    ("ad\u00admin", "U+00AD SOFT HYPHEN"),
    ("ad\u2060min", "U+2060 WORD JOINER"),
    ("evil\u202egnp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("ad\u2065min", "U+2065"),  # unassigned, default-ignorable: renders as nothing whatever it becomes
    ("ada\U000e0200", "U+E0200"),
    ("ada\ufffe", "U+FFFE"),  # a noncharacter
    ("ada\u00a0lovelace", "U+00A0 NO-BREAK SPACE"),  # looks like "ada lovelace"
    ("ada\u2009lovelace", "U+2009 THIN SPACE"),
    ("ada\u202flovelace", "U+202F NARROW NO-BREAK SPACE"),
    ("ada\u1680lovelace", "U+1680 OGHAM SPACE MARK"),
    ("bell\x07", "U+0007"),
    ("new\nline", "U+000A"),
    ("ls\u2028x", "U+2028 LINE SEPARATOR"),
]


@pytest.mark.parametrize(("name", "named"), REFUSED)
def test_names_that_render_blank_or_as_another_are_refused_saying_why(name: str, named: str) -> None:
    errors: list[FieldError] = []
    check_user(name, errors)
    assert len(errors) == 1
    assert errors[0].field == "user"
    assert named in errors[0].message


def test_a_stack_of_combining_marks_is_refused_past_the_limit() -> None:
    """Counted in the NFC form: "e" and an acute compose into one letter."""
    for stacked, refused in (
        ("q" + "\u0301" * (USER_MAX_MARKS + 1), True),
        ("e" + "\u0301" * (USER_MAX_MARKS + 1), False),
    ):
        errors: list[FieldError] = []
        check_user(stacked, errors)
        assert bool(errors) == refused, stacked
    errors = []
    check_user("z" + "\u0336\u0337\u0321\u0322" * 60, errors)  # zalgo
    assert [error.field for error in errors] == ["user"]
    assert f"more than {USER_MAX_MARKS} combining marks" in errors[0].message


def test_names_made_only_of_space_or_blank_characters_are_refused() -> None:
    for blank in (" ", "\u3000", "\t ", "\u2800", "\u3164 \u3164", "\u2800\u2800", "\u200d", "\ufe0f"):
        errors: list[FieldError] = []
        check_user(blank, errors)
        assert [error.field for error in errors] == ["user"], repr(blank)


def test_one_person_one_name_the_nfc_spelling() -> None:
    """Typed precomposed or with combining marks, in either order of the marks, it is one name."""
    spellings = {
        "Jos\u00e9": ["Jose\u0301"],
        "\u1ec7": ["e\u0302\u0323", "e\u0323\u0302", "\u00ea\u0323"],  # Vietnamese e with circumflex and dot below
        "\ud55c\uad6d\uc5b4": ["\u1112\u1161\u11ab\u1100\u116e\u11a8\u110b\u1165"],  # Hangul syllables and jamo
        "\u212b": [],  # the angstrom sign is canonically the letter A with ring: stored as U+00C5
    }
    for nfc, others in spellings.items():
        stored = check_user(nfc, [])
        assert stored == unicodedata.normalize("NFC", nfc)
        for other in others:
            assert check_user(other, []) == stored
    assert check_user("\u212b", []) == "\u00c5"


def test_compatibility_forms_are_other_names() -> None:
    """NFC, not NFKC: full-width letters, superscripts and ligatures look different, and are kept as typed."""
    for name in ("\uff41lice", "x\u00b2", "\ufb01sh", "\u2460", "\u338f"):
        errors: list[FieldError] = []
        assert check_user(name, errors) == name
        assert errors == []
        assert check_user(name, []) != unicodedata.normalize("NFKC", name)


def test_the_length_is_counted_in_the_nfc_form() -> None:
    decomposed = "e\u0301" * USER_MAX_LENGTH  # 640 characters typed, 320 stored
    errors: list[FieldError] = []
    assert check_user(decomposed, errors) == "\u00e9" * USER_MAX_LENGTH
    assert errors == []
    check_user("\u00e9" * (USER_MAX_LENGTH + 1), errors)
    assert [error.message for error in errors] == [f"must be 1 to {USER_MAX_LENGTH} characters after trimming, got 321"]


def test_a_long_run_of_marks_is_refused_without_normalising_it() -> None:
    """NFC reorders a run of marks in quadratic time: a name that cannot fit is refused first."""
    hostile = "a" + "\u0301\u0323" * 50_000
    errors: list[FieldError] = []
    check_user(hostile, errors)
    assert [error.message for error in errors] == [
        f"must be 1 to {USER_MAX_LENGTH} characters after trimming, got {len(hostile)}"
    ]


def test_the_nfc_form_is_what_both_body_forms_record() -> None:
    from_json = parse_json(b'{"clouds": [0, 0], "user": "Jose\\u0301"}', {}, 100)
    from_text = parse_text(b"2\n0 0\n", {"user": "Jose\u0301"}, 100)
    assert from_json.user == from_text.user == "Jos\u00e9"


def test_a_refused_name_names_user_in_a_422() -> None:
    with pytest.raises(Problem) as raised:
        parse_json('{"clouds": [0, 0], "user": "\u3164"}'.encode(), {}, 100)
    assert raised.value.status == 422
    assert [error.field for error in raised.value.errors] == ["user"]
