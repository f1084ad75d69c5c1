"""POST /jumps, GET /jumps/{id} and POST /jotc through the real server against real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

Connection = psycopg.Connection[tuple[object, ...]]
SAMPLE = [0, 0, 1, 0, 0, 1, 0]


def post(client: httpx.Client, body: Any, path: str = "/jumps", **kwargs: Any) -> httpx.Response:
    return client.post(path, json=body, **kwargs)


def count_rows(db: Connection) -> int:
    row = db.execute("SELECT count(*) FROM jump_requests").fetchone()
    assert row is not None
    return int(str(row[0]))


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith(f"/{kind}")
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return dict(problem)


def field_errors(response: httpx.Response) -> dict[str, str]:
    problem = assert_problem(response, 422, "validation")
    return {error["field"]: error["message"] for error in problem["errors"]}


def test_post_jumps_answers_201_with_location_and_the_solution(client: httpx.Client) -> None:
    response = post(client, {"clouds": SAMPLE, "user": "ada@example.com", "max_jump": 2})
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "id": body["id"],
        "jumps": 4,
        "path": [0, 1, 3, 4, 6],
        "n": 7,
        "max_jump": 2,
        "user": "ada@example.com",
    }
    assert response.headers["location"] == f"/jumps/{body['id']}"
    assert uuid.UUID(body["id"]).version == 7


@pytest.mark.parametrize(
    "body",
    [{"clouds": SAMPLE}, {"clouds": "0010", "user": "José", "max_jump": 3}, {"clouds": [0] * 50, "max_jump": 1}],
)
def test_get_repeats_every_field_post_answered_with_the_same_value(client: httpx.Client, body: Any) -> None:
    created = post(client, body)
    assert created.status_code == 201, created.text
    record = client.get(created.headers["location"]).json()
    answered = created.json()
    assert {key: record.get(key, "(missing)") for key in answered} == answered


def test_the_row_is_committed_before_201_with_clouds_bit_packed(client: httpx.Client, db: Connection) -> None:
    body = post(client, {"clouds": SAMPLE, "user": "bits@example.com"}).json()
    row = db.execute(
        "SELECT user_name, n, max_jump, clouds, jumps, get_bit(clouds, 2), get_bit(clouds, 5) "
        "FROM jump_requests WHERE id = %s",
        (body["id"],),
    ).fetchone()
    # 0 0 1 0 0 1 0, least significant bit first: bits 2 and 5 set = 0b00100100.
    assert row == ("bits@example.com", 7, 2, b"\x24", 4, 1, 1)


def test_defaults_user_anonymous_and_max_jump_2(client: httpx.Client) -> None:
    body = post(client, {"clouds": [0, 0]}).json()
    assert (body["user"], body["max_jump"], body["jumps"], body["path"]) == ("anonymous", 2, 1, [0, 1])


def test_user_is_trimmed(client: httpx.Client) -> None:
    assert post(client, {"clouds": [0, 0], "user": "  ada  "}).json()["user"] == "ada"


@pytest.mark.parametrize(
    ("clouds", "jumps"),
    [
        ([0, 0, 1, 0, 0, 1, 0], 4),
        ([0, 0, 0, 0, 1, 0], 3),
        ([0, 1, 0, 0, 0, 1, 0], 3),
        ([0, 0], 1),
    ],
)
def test_reference_samples(client: httpx.Client, clouds: list[int], jumps: int) -> None:
    assert post(client, {"clouds": clouds}).json()["jumps"] == jumps


@pytest.mark.parametrize("digits", ["0010010", "0 0 1 0 0 1 0", "0,0,1,0,0,1,0", " 0010010\n"])
def test_clouds_as_a_digit_string(client: httpx.Client, digits: str) -> None:
    response = post(client, {"clouds": digits})
    assert response.status_code == 201, response.text
    assert response.json()["path"] == [0, 1, 3, 4, 6]


def test_larger_max_jump(client: httpx.Client) -> None:
    body = post(client, {"clouds": [0, 0, 0, 1, 0, 1, 1, 0], "max_jump": 3}).json()
    assert (body["jumps"], body["path"]) == (3, [0, 2, 4, 7])


def test_text_plain_hackerrank_format(client: httpx.Client, db: Connection) -> None:
    response = client.post(
        "/jumps",
        content=b"7\n0 0 1 0 0 1 0\n",
        headers={"content-type": "text/plain"},
        params={"user": "hr@example.com", "max_jump": "2"},
    )
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "4\n"
    request_id = response.headers["location"].rsplit("/", 1)[1]
    assert db.execute("SELECT user_name FROM jump_requests WHERE id = %s", (request_id,)).fetchone() == (
        "hr@example.com",
    )


def test_text_plain_with_crlf_and_charset(client: httpx.Client) -> None:
    response = client.post(
        "/jumps", content=b"6\r\n0 0 0 0 1 0\r\n", headers={"content-type": "text/plain; charset=utf-8"}
    )
    assert (response.status_code, response.text) == (201, "3\n")


@pytest.mark.parametrize(
    "body",
    [
        b"7\n0 0 1 0 0 1\n",  # n does not match
        b"0 0 1 0\n",  # one line
        b"x\n0 0\n",  # n not a number
        b"2\n0 a\n",  # value not a number
        b"2\n0 0\n3\n",  # three lines
        "2\n0 \u00e9\n".encode(),  # not ASCII
    ],
)
def test_text_plain_malformed_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/jumps", content=body, headers={"content-type": "text/plain"})
    assert_problem(response, 400, "malformed-body")


def test_text_plain_bad_values_and_query_are_422(client: httpx.Client) -> None:
    response = client.post("/jumps", content=b"3\n0 2 0\n", headers={"content-type": "text/plain"})
    assert "clouds[1]" in field_errors(response)
    response = client.post(
        "/jumps", content=b"2\n0 0\n", headers={"content-type": "text/plain"}, params={"max_jump": "x"}
    )
    assert "max_jump" in field_errors(response)
    response = client.post(
        "/jumps", content=b"2\n0 0\n", headers={"content-type": "text/plain"}, params={"maxjump": "3"}
    )
    assert "maxjump" in field_errors(response)


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"clouds": [0, 0]', b"not json", b"", b'{"clouds": [0, 0]} trailing'],
)
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/jumps", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed-body")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"clouds": [0, True, 0]}, "clouds[1]"),
        ({"clouds": [0, 1.0, 0]}, "clouds[1]"),
        ({"clouds": [0, "1", 0]}, "clouds[1]"),
        ({"clouds": [0, None, 0]}, "clouds[1]"),
        ({"clouds": [0, 2, 0]}, "clouds[1]"),
        ({"clouds": [0, 0, -1, 0]}, "clouds[2]"),
        ({"clouds": [0, 0, 10**30, 0]}, "clouds[2]"),
        ({"clouds": [1, 0, 0]}, "clouds[0]"),
        ({"clouds": [0, 0, 1]}, "clouds[2]"),
        ({"clouds": [0]}, "clouds"),
        ({"clouds": []}, "clouds"),
        ({"clouds": "0"}, "clouds"),
        ({"clouds": ""}, "clouds"),
        ({"clouds": "0 2 0"}, "clouds"),
        ({"clouds": "0  0"}, "clouds"),
        ({"clouds": "0 0,0"}, "clouds"),
        ({"clouds": "00 0"}, "clouds"),
        ({"clouds": {"a": 1}}, "clouds"),
        ({"clouds": 7}, "clouds"),
        ({"clouds": None}, "clouds"),
        ({"clouds": [0, 0] * 2501}, "clouds"),
        ({"clouds": "0" * 5001}, "clouds"),
        ({"user": "ada"}, "clouds"),
        ({"clouds": [0, 0], "user": ""}, "user"),
        ({"clouds": [0, 0], "user": "   "}, "user"),
        ({"clouds": [0, 0], "user": "x" * 321}, "user"),
        ({"clouds": [0, 0], "user": 5}, "user"),
        ({"clouds": [0, 0], "user": None}, "user"),
        ({"clouds": [0, 0], "user": "nul\u0000byte"}, "user"),
        ({"clouds": [0, 0], "max_jump": 0}, "max_jump"),
        ({"clouds": [0, 0], "max_jump": 1001}, "max_jump"),
        ({"clouds": [0, 0], "max_jump": True}, "max_jump"),
        ({"clouds": [0, 0], "max_jump": 2.5}, "max_jump"),
        ({"clouds": [0, 0], "max_jump": "2"}, "max_jump"),
        ({"clouds": [0, 0], "cloud": [0, 0]}, "cloud"),
    ],
)
def test_validation_errors_are_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    errors = field_errors(post(client, body))
    assert field in errors, errors
    assert errors[field]


def test_top_level_must_be_an_object(client: httpx.Client) -> None:
    assert "body" in field_errors(post(client, [0, 0]))


def test_user_of_320_characters_is_accepted(client: httpx.Client) -> None:
    assert post(client, {"clouds": [0, 0], "user": "u" * 320}).status_code == 201


def test_several_errors_are_reported_together(client: httpx.Client) -> None:
    errors = field_errors(post(client, {"clouds": [1, 0, 1], "user": "", "max_jump": 0}))
    assert {"clouds[0]", "clouds[2]", "user", "max_jump"} <= set(errors)


def test_query_parameters_are_refused_on_json_requests(client: httpx.Client) -> None:
    assert "user" in field_errors(post(client, {"clouds": [0, 0]}, params={"user": "ada"}))


def test_unreachable_is_422_with_blocked_at(client: httpx.Client, db: Connection) -> None:
    before = count_rows(db)
    problem = assert_problem(post(client, {"clouds": [0, 0, 1, 0, 1, 1, 1, 0]}), 422, "unreachable")
    assert problem["blocked_at"] == 4
    problem = assert_problem(post(client, {"clouds": "0 1 1 0"}), 422, "unreachable")
    assert problem["blocked_at"] == 1
    assert post(client, {"clouds": [0, 1, 1, 0], "max_jump": 3}).json()["jumps"] == 1
    assert count_rows(db) == before + 1  # the unreachable ones were not recorded


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    response = client.post(
        "/jumps",
        content=b'{"clouds": "' + b"0" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413, "body-too-large")


def test_a_body_streamed_without_content_length_is_411(client: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"clouds": "'
        yield b"00"
        yield b'"}'

    response = client.post("/jumps", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 411, "length-required")
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/xml", "text/html", None])
def test_other_content_types_are_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/jumps", content=b"clouds=0,0", headers=headers)
    assert_problem(response, 415, "unsupported-media-type")


def test_json_with_charset_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/jumps",
        content=json.dumps({"clouds": [0, 0]}).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


def test_get_jump_returns_the_recorded_request(client: httpx.Client) -> None:
    created = post(client, {"clouds": "0 0 1 0 0 1 0", "user": "reader@example.com"}).json()
    response = client.get(f"/jumps/{created['id']}")
    assert response.status_code == 200
    record = response.json()
    assert {key: record[key] for key in ("id", "user", "n", "max_jump", "clouds", "jumps", "path")} == {
        "id": created["id"],
        "user": "reader@example.com",
        "n": 7,
        "max_jump": 2,
        "clouds": SAMPLE,
        "jumps": 4,
        "path": [0, 1, 3, 4, 6],
    }
    assert datetime.fromisoformat(record["created_at"]).tzinfo is not None


def test_get_jump_round_trips_a_large_input(client: httpx.Client) -> None:
    clouds = [*([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0] * 400)[:4001], 0]
    created = post(client, {"clouds": clouds, "max_jump": 3}).json()
    record = client.get(f"/jumps/{created['id']}").json()
    assert (record["clouds"], record["path"], record["jumps"]) == (clouds, created["path"], created["jumps"])


@pytest.mark.parametrize("request_id", ["0196a3c2-7d11-7000-8000-0123456789ab", "not-a-uuid", "1", "%20"])
def test_unknown_or_malformed_id_is_404(client: httpx.Client, request_id: str) -> None:
    assert_problem(client.get(f"/jumps/{request_id}"), 404, "not-found")


def test_deleted_request_is_404(client: httpx.Client, db: Connection) -> None:
    created = post(client, {"clouds": [0, 0], "user": "erased@example.com"}).json()
    db.execute("DELETE FROM jump_requests WHERE id = %s", (created["id"],))
    db.execute("DELETE FROM user_stats WHERE user_name = 'erased@example.com'")
    assert_problem(client.get(f"/jumps/{created['id']}"), 404, "not-found")


def test_jotc_compatibility_shape_and_recording(client: httpx.Client, db: Connection) -> None:
    before = db.execute("SELECT requests FROM user_stats WHERE user_name = 'php'").fetchone()
    response = post(client, {"clouds": SAMPLE, "user": "php"}, path="/jotc")
    assert response.status_code == 200
    assert response.json() == {
        "moves": [{"from": 0, "to": 1}, {"from": 1, "to": 3}, {"from": 3, "to": 4}, {"from": 4, "to": 6}],
        "total": 4,
    }
    after = db.execute("SELECT requests FROM user_stats WHERE user_name = 'php'").fetchone()
    assert after == ((before[0] if before else 0) + 1,)  # type: ignore[index]


def test_jotc_validates_like_jumps(client: httpx.Client) -> None:
    assert "clouds[1]" in field_errors(post(client, {"clouds": [0, 2, 0]}, path="/jotc"))
    assert "max_jump" in field_errors(post(client, {"clouds": [0, 0], "max_jump": 3}, path="/jotc"))
    problem = assert_problem(post(client, {"clouds": [0, 1, 1, 0]}, path="/jotc"), 422, "unreachable")
    assert problem["blocked_at"] == 1
    response = client.post("/jotc", content=b"2\n0 0\n", headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported-media-type")


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    mine = client.get("/healthz", headers={"x-request-id": "trace-123"})
    assert mine.headers["x-request-id"] == "trace-123"
    made = post(client, {"clouds": [0, 0]})
    assert len(made.headers["x-request-id"]) >= 16
    hostile = client.get("/healthz", headers={"x-request-id": "<script> " + "x" * 200})
    assert hostile.headers["x-request-id"].isalnum()


def test_unknown_route_and_method_are_problems(client: httpx.Client) -> None:
    assert_problem(client.get("/nope"), 404, "not-found")
    assert_problem(client.delete("/jumps"), 405, "method-not-allowed")
