"""Input and identity, through the real server: a JSON member given twice is refused, user names
that render blank or as another name are refused wherever a name enters, a name is recorded in one
spelling (NFC) so that erasing it erases what was posted in any spelling, and a refused 1 MiB text
body is answered as specifically as ever, and costs less than two of the largest valid ones."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from support import AUTH, ApiServer, start_api

MAX_CLOUDS = 100_000
TEXT = {"content-type": "text/plain"}


@pytest.mark.parametrize("route", ["/jumps", "/jotc"])
@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"clouds": [0, 0], "user": "first", "user": "second"}', "user"),
        (b'{"clouds": [0, 0], "user": "first", "\\u0075ser": "second"}', "user"),
        (b'{"clouds": [0, 1, 0], "clouds": [0, 0]}', "clouds"),
    ],
)
def test_a_json_member_given_twice_is_refused_naming_it(
    server_client: httpx.Client, route: str, body: bytes, member: str
) -> None:
    answer = server_client.post(route, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "/problems/validation"
    assert problem["errors"] == [{"field": member, "message": "given more than once"}]


BLANK_OR_ALIAS = [
    "\u3164",  # Hangul filler: renders blank
    "\u2800",  # braille blank
    "\u115f\u1160",
    "ada\u200d",  # trailing joiner: renders as "ada"
    "ad\u200dmin",  # a joiner between Latin letters: renders as "admin"
    "ad\u034fmin",  # combining grapheme joiner
    "ada\u00a0lovelace",  # looks like "ada lovelace"
    "\ufe0f",  # a variation selector standing alone
    "z" + "\u0336\u0337\u0321" * 100,  # zalgo: hundreds of stacked marks
]


@pytest.mark.parametrize("name", BLANK_OR_ALIAS)
def test_names_that_render_blank_or_as_another_are_refused_wherever_a_name_enters(
    server_client: httpx.Client, name: str
) -> None:
    answers = {
        "JSON body": server_client.post("/jumps", json={"clouds": [0, 0], "user": name}),
        "POST /jotc": server_client.post("/jotc", json={"clouds": [0, 0], "user": name}),
        "text query": server_client.post("/jumps", params={"user": name}, content=b"2\n0 0\n", headers=TEXT),
        "admin filter": server_client.get("/admin/requests", params={"user": name}, headers=AUTH),
        "admin erasure": server_client.delete(f"/admin/users/{quote(name, safe='')}/requests", headers=AUTH),
        "admin erasure status": server_client.get(f"/admin/erasures/{quote(name, safe='')}", headers=AUTH),
    }
    for where, answer in answers.items():
        assert answer.status_code == 422, f"{where}: {answer.status_code} {answer.text[:300]}"
        errors = answer.json()["errors"]
        assert [error["field"] for error in errors] == ["user"], where
        assert errors[0]["message"].startswith("must"), where  # says why, not only that


def test_names_in_scripts_that_need_joiners_are_recorded_as_written(server_client: httpx.Client) -> None:
    for name in (
        "\U0001f469\u200d\U0001f4bb",  # woman technologist
        "\u2764\ufe0f\u200d\U0001f525",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, a ZWNJ inside the word
        "\u0915\u094d\u200d\u0937",  # Devanagari, a ZWJ after the virama
    ):
        answer = server_client.post("/jumps", json={"clouds": [0, 0], "user": name})
        assert answer.status_code == 201, answer.text
        assert answer.json()["user"] == name
        assert server_client.get(answer.headers["location"]).json()["user"] == name


def test_a_name_is_recorded_in_one_spelling_and_erased_in_any(server_client: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    composed = f"Jos\u00e9 {tag}"  # NFC: é is one character
    decomposed = f"Jose\u0301 {tag}"  # NFD: e, then a combining acute accent
    posted = [
        server_client.post("/jumps", json={"clouds": [0, 0], "user": decomposed}),
        server_client.post("/jumps", params={"user": decomposed}, content=b"2\n0 0\n", headers=TEXT),
        server_client.post("/jotc", json={"clouds": [0, 0], "user": decomposed}),
        server_client.post("/jumps", json={"clouds": [0, 0], "user": composed}),
    ]
    assert [answer.status_code for answer in posted] == [201, 201, 200, 201], [a.text for a in posted]
    assert posted[0].json()["user"] == composed  # the answer gives the recorded spelling
    records = [posted[0].headers["location"], posted[1].headers["location"], posted[3].headers["location"]]
    assert [server_client.get(record).json()["user"] for record in records] == [composed] * 3

    for spelling in (composed, decomposed):  # the admin filter finds every one, whichever spelling it is given
        listed = server_client.get("/admin/requests", params={"user": spelling}, headers=AUTH)
        assert listed.status_code == 200, listed.text
        assert [item["user"] for item in listed.json()["items"]] == [composed] * 4
    assert [user for user in stats_users(server_client) if tag in user] == [composed]  # one user, not two

    erased = server_client.delete(f"/admin/users/{quote(composed, safe='')}/requests", headers=AUTH)
    assert erased.status_code == 200, erased.text
    assert erased.json() == {"user": composed, "deleted": 4}
    assert [server_client.get(record).status_code for record in records] == [404] * 3
    status = server_client.get(f"/admin/erasures/{quote(decomposed, safe='')}", headers=AUTH)
    assert status.status_code == 200, status.text
    assert status.json()["user"] == composed


def stats_users(http: httpx.Client) -> list[str]:
    users: list[str] = []
    params = {"sort": "user", "order": "asc", "limit": "1000"}
    while True:
        page = http.get("/admin/stats", params=params, headers=AUTH).json()
        users += [user["user"] for user in page["users"]]
        if not page["next_cursor"]:
            return users
        params["cursor"] = page["next_cursor"]


@pytest.fixture(scope="module")
def large_body_api(database_url: str, tmp_root: Path) -> Iterator[ApiServer]:
    """One worker taking bodies past 1 MiB, so a refused 1 MiB body reaches the parser."""
    server = start_api(
        database_url,
        tmp_root,
        JOTC_WORKERS="1",
        JOTC_MAX_CLOUDS=str(MAX_CLOUDS),
        JOTC_MAX_BODY_BYTES=str(1_100_000),
        JOTC_MAX_UPLOADS="4",
    )
    yield server
    server.stop()


def cpu_seconds(server: ApiServer) -> float:
    """CPU time used so far by the server and its workers (user and system, every thread)."""
    ticks = 0
    pending = [server.process.pid]
    while pending:
        pid = pending.pop()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        for task in Path(f"/proc/{pid}/task").iterdir():
            pending += [int(child) for child in (task / "children").read_text().split()]
    return ticks / os.sysconf("SC_CLK_TCK")


def costs_of(server: ApiServer, requests: list[tuple[bytes, int]], rounds: int) -> list[float]:
    """The server's CPU seconds for each of these requests (a body, the status it is answered),
    sent `rounds` times in turn: one after the other, so that whatever else the machine runs
    meanwhile falls on each alike."""
    spent = [0.0] * len(requests)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for body, _ in requests:  # warm: the first of a kind pays for imports
            http.post("/jumps", content=body, headers=TEXT)
        for _ in range(rounds):
            for kind, (body, expected) in enumerate(requests):
                before = cpu_seconds(server)
                answer = http.post("/jumps", content=body, headers=TEXT)
                spent[kind] += cpu_seconds(server) - before
                assert answer.status_code == expected, answer.text[:300]
    return spent


def test_a_refused_1_mib_text_body_is_answered_as_specifically_and_costs_less_than_two_valid_ones(
    large_body_api: ApiServer,
) -> None:
    half_a_million = 524_287
    values = b" ".join([b"0"] * half_a_million)  # 1 MiB
    too_many = f"{half_a_million}\n".encode() + values
    mismatched = b"5\n" + values
    largest_valid = f"{MAX_CLOUDS}\n".encode() + b" ".join([b"0"] * MAX_CLOUDS)
    with httpx.Client(base_url=large_body_api.base_url, timeout=60) as http:
        answer = http.post("/jumps", content=too_many, headers=TEXT)
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["errors"] == [
            {"field": "clouds", "message": f"at most {MAX_CLOUDS} clouds are accepted, got {half_a_million}"}
        ]
        answer = http.post("/jumps", content=mismatched, headers=TEXT)
        assert answer.status_code == 400, answer.text[:300]
        assert answer.json()["detail"] == f"first line says n = 5 but the second line has {half_a_million} values"

    # CPU time, not wall time: what the server spent, whatever else the machine runs. A refused body
    # five times the size of the largest valid one is received, but nothing is done per value: it
    # costs less than two valid ones (which are parsed, solved and recorded). Sent in turn, so that
    # a busy stretch of the machine weighs on both kinds alike.
    refused, valid = costs_of(large_body_api, [(too_many, 422), (largest_valid, 201)], rounds=40)
    assert refused < 2 * valid, (
        f"40 refused 1 MiB bodies took {refused:.2f} s of CPU, 40 largest valid ones {valid:.2f} s"
    )
