"""The admin API in process against real PostgreSQL: auth, statistics, listing, erasure, hostile
parameters. Erasure racing new requests on the real server: tests/system/test_admin_race.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from support import ADMIN_TOKEN, TEST_SETTINGS, fresh_database, in_process

from jotc_api import erasure
from jotc_api.erasure import Pace

Connection = psycopg.Connection[tuple[object, ...]]
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def record(client: httpx.Client, user: str, times: int = 1) -> list[str]:
    ids = []
    for _ in range(times):
        response = client.post("/jumps", json={"clouds": [0, 0, 1, 0], "user": user})
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


@pytest.mark.parametrize("path", ["/admin/stats", "/admin/requests"])
@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "send Authorization"),
        ({"authorization": f"Basic {ADMIN_TOKEN}"}, "Bearer scheme"),
        ({"authorization": "Bearer"}, "Bearer scheme"),
        ({"authorization": "Bearer wrong-token"}, "not valid"),
        ({"authorization": f"Bearer {ADMIN_TOKEN}x"}, "not valid"),
    ],
)
def test_admin_needs_the_right_bearer_token(client: httpx.Client, path: str, headers: dict[str, str], why: str) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"].startswith("application/problem+json")
    assert why in response.json()["detail"]


def test_delete_needs_the_token_too(client: httpx.Client) -> None:
    assert client.delete("/admin/users/anyone/requests").status_code == 401


@pytest.mark.parametrize("token", ["", "   "])
def test_no_configured_token_refuses_every_admin_request(database_url: str, token: str) -> None:
    with in_process(database_url, JOTC_ADMIN_TOKEN=token) as http:
        for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Bearer anything"}, AUTH):
            response = http.get("/admin/stats", headers=headers)
            assert response.status_code == 401, f"{headers}: {response.status_code}"
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_stats_count_requests_per_user(client: httpx.Client) -> None:
    user = unique("stats")
    record(client, user, 3)
    body = client.get("/admin/stats", params={"sort": "user", "order": "asc", "limit": 1000}, headers=AUTH).json()
    assert body["total_requests"] >= 3
    assert body["total_users"] >= 1
    mine = [entry for entry in body["users"] if entry["user"] == user]
    assert len(mine) == 1
    assert mine[0]["requests"] == 3
    assert datetime.fromisoformat(mine[0]["last_request_at"]).tzinfo is not None


def walk(client: httpx.Client, path: str, params: dict[str, Any], field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page_params = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=page_params, headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body[field])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.fixture(scope="module")
def seven_users() -> Iterator[httpx.Client]:
    """A database of its own holding exactly seven users, 1 to 3 requests each."""
    with fresh_database() as url, in_process(url, **TEST_SETTINGS) as http:
        for i in range(7):
            record(http, f"user-{i}", times=1 + i % 3)
        yield http


STATS_ORDER = {
    "requests": lambda u: (u["requests"], u["user"]),
    "user": lambda u: u["user"],
    "last_request_at": lambda u: (u["last_request_at"], u["user"]),
}


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_stats_keyset_pages_by_user_cover_every_user_once_in_order(seven_users: httpx.Client, order: str) -> None:
    users = walk(seven_users, "/admin/stats", {"sort": "user", "order": order, "limit": 2}, "users")
    assert [u["user"] for u in users] == sorted((f"user-{i}" for i in range(7)), reverse=order == "desc")


@pytest.mark.parametrize("sort", ["requests", "last_request_at"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_stats_by_a_changing_key_are_one_page_in_order(seven_users: httpx.Client, sort: str, order: str) -> None:
    everyone = walk(seven_users, "/admin/stats", {"sort": sort, "order": order, "limit": 1000}, "users")
    assert everyone == sorted(everyone, key=STATS_ORDER[sort], reverse=order == "desc")
    assert sorted(u["user"] for u in everyone) == [f"user-{i}" for i in range(7)]
    page = seven_users.get("/admin/stats", params={"sort": sort, "order": order, "limit": 2}, headers=AUTH).json()
    assert (page["users"], page["next_cursor"], page["complete"]) == (everyone[:2], None, False)


def test_requests_listing_newest_first_filtered_and_without_clouds(client: httpx.Client) -> None:
    user = unique("listing")
    ids = record(client, user, 5)
    body = client.get("/admin/requests", params={"user": user}, headers=AUTH).json()
    assert [item["id"] for item in body["items"]] == list(reversed(ids))
    assert body["next_cursor"] is None
    item = body["items"][0]
    assert set(item) == {"id", "user", "n", "max_jump", "jumps", "path", "created_at"}
    assert (item["user"], item["n"], item["jumps"], item["path"]) == (user, 4, 2, [0, 1, 3])


def test_requests_since_and_until(client: httpx.Client) -> None:
    user = unique("window")
    record(client, user, 2)
    now = datetime.now(UTC)
    future = (now + timedelta(hours=1)).isoformat()
    past = (now - timedelta(hours=1)).isoformat()
    assert len(client.get("/admin/requests", params={"user": user, "since": past}, headers=AUTH).json()["items"]) == 2
    assert client.get("/admin/requests", params={"user": user, "since": future}, headers=AUTH).json()["items"] == []
    assert client.get("/admin/requests", params={"user": user, "until": past}, headers=AUTH).json()["items"] == []
    zulu = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.get("/admin/requests", params={"until": zulu, "limit": 1}, headers=AUTH).status_code == 200


def test_requests_pages_neither_skip_nor_repeat_while_requests_arrive(client: httpx.Client) -> None:
    user = unique("paging")
    before = record(client, user, 9)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"user": user, "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/admin/requests", params=params, headers=AUTH).json()
        seen.extend(item["id"] for item in body["items"])
        record(client, user, 1)  # new arrivals between pages
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(before))


def test_erasure_removes_requests_and_statistics_and_is_idempotent(client: httpx.Client, db: Connection) -> None:
    user = unique("erase")
    ids = record(client, user, 4)
    response = client.delete(f"/admin/users/{user}/requests", headers=AUTH)
    assert (response.status_code, response.json()) == (200, {"user": user, "deleted": 4})
    assert db.execute("SELECT count(*) FROM jump_requests WHERE user_name = %s", (user,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM user_stats WHERE user_name = %s", (user,)).fetchone() == (0,)
    assert client.get(f"/jumps/{ids[0]}").status_code == 404
    again = client.delete(f"/admin/users/{user}/requests", headers=AUTH)
    assert (again.status_code, again.json()) == (200, {"user": user, "deleted": 0})


def test_erasures_run_at_the_configured_pace(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    paces: list[Pace] = []
    run_job = erasure.run_job

    async def recording(engine: Any, user: str, *, pace: Pace, seconds: float | None = None) -> Any:
        paces.append(pace)
        return await run_job(engine, user, pace=pace, seconds=seconds)

    monkeypatch.setattr(erasure, "run_job", recording)
    paced = {"JOTC_ERASURE_CHUNK_ROWS": "10", "JOTC_ERASURE_BUSY_PERCENT": "50"}
    for env, expected in [(paced, Pace(chunk_rows=10, busy_share=0.5)), ({}, Pace(chunk_rows=1000, busy_share=0.10))]:
        paces.clear()
        with in_process(database_url, JOTC_ADMIN_TOKEN=ADMIN_TOKEN, **env) as http:
            user = f"paced-{uuid.uuid4().hex[:8]}@example.com"
            answer = http.delete(f"/admin/users/{user}/requests", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            assert answer.status_code == 200, answer.text
        assert paces, "the erasure ran no job"
        assert set(paces) == {expected}, f"with {env or 'the defaults'}: {paces}"


def test_user_names_with_reserved_characters_are_erased(client: httpx.Client) -> None:
    user = "o'brien; DROP TABLE jump_requests;--@example.com"
    record(client, user, 2)
    response = client.delete(f"/admin/users/{httpx.URL(path=user).raw_path.decode()}/requests", headers=AUTH)
    assert response.json()["deleted"] == 2


HOSTILE = ["' OR 1=1 --", "1; DROP TABLE user_stats", "x" * 5000, "-1", "0", "1001", "1e3", "", "\u0000"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/admin/stats", "limit"),
        ("/admin/stats", "cursor"),
        ("/admin/stats", "sort"),
        ("/admin/stats", "order"),
        ("/admin/requests", "limit"),
        ("/admin/requests", "cursor"),
        ("/admin/requests", "since"),
        ("/admin/requests", "until"),
        ("/admin/requests", "user"),
    ],
)
def test_hostile_admin_parameters_are_4xx_never_500(client: httpx.Client, path: str, name: str, value: str) -> None:
    response = client.get(path, params={name: value}, headers=AUTH)
    if name == "user" and 1 <= len(value) <= 320 and "\x00" not in value:
        assert response.status_code == 200  # a strange name is still just a name
        assert response.json()["items"] == []
    else:
        assert response.status_code == 422, (name, value, response.text)
        assert name in {error["field"] for error in response.json()["errors"]}


@pytest.mark.parametrize("path", ["/admin/stats", "/admin/requests"])
def test_unknown_admin_parameters_are_named(client: httpx.Client, path: str) -> None:
    response = client.get(path, params={"sortt": "user"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "sortt"


def test_a_cursor_from_another_sort_is_refused(client: httpx.Client) -> None:
    record(client, unique("cursor-a"), 1)
    record(client, unique("cursor-b"), 1)
    page = client.get("/admin/stats", params={"sort": "user", "limit": 1}, headers=AUTH).json()
    assert page["next_cursor"]
    response = client.get(
        "/admin/stats", params={"sort": "user", "order": "asc", "cursor": page["next_cursor"]}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("user", ["x" * 5000, "' OR '1'='1"])
def test_hostile_user_on_erasure(client: httpx.Client, user: str) -> None:
    response = client.delete(f"/admin/users/{user}/requests", headers=AUTH)
    assert response.status_code in {200, 404, 414, 422}
    assert response.status_code < 500


def test_no_user_name_reads_or_replaces_another_users_erasure_record(client: httpx.Client, db: Connection) -> None:
    ada = unique("ada")
    record(client, ada, 1)
    assert client.delete(f"/admin/users/{ada}/requests", headers=AUTH).json() == {"user": ada, "deleted": 1}
    before = client.get(f"/admin/erasures/{ada}", headers=AUTH).json()
    alias = erasure.unmarked_pseudonym(ada)  # "sha256:<digest of ada>": a valid user name
    assert client.get(f"/admin/erasures/{alias}", headers=AUTH).status_code == 404
    record(client, alias, 2)
    assert client.delete(f"/admin/users/{alias}/requests", headers=AUTH).json() == {"user": alias, "deleted": 2}
    assert client.get(f"/admin/erasures/{ada}", headers=AUTH).json() == before
    assert client.get(f"/admin/erasures/{alias}", headers=AUTH).json()["deleted"] == 2
    names = {row[0] for row in db.execute("SELECT user_name FROM erasure_jobs WHERE user_name LIKE %s", ("%sha256:%",))}
    assert {erasure.pseudonym(ada), erasure.pseudonym(alias)} <= names
    assert not {ada, alias} & names, "a finished record names no one"


def plant_unmarked(db: Connection, user: str, deleted: int, days_ago: int) -> None:
    """A finished erasure's record as the previous release left it: named by an unmarked digest."""
    db.execute(
        "INSERT INTO erasure_jobs (user_name, state, cutoff, deleted, requested_at, updated_at, finished_at) "
        "SELECT %s, 'done', t, %s, t, t, t FROM (SELECT now() - make_interval(days => %s) AS t) AS past",
        (erasure.unmarked_pseudonym(user), deleted, days_ago),
    )


def test_records_left_by_the_previous_release_stay_readable_and_apart(client: httpx.Client, db: Connection) -> None:
    ada = unique("ada")
    plant_unmarked(db, ada, deleted=5, days_ago=1)
    alias = erasure.unmarked_pseudonym(ada)
    ours = client.get(f"/admin/erasures/{ada}", headers=AUTH)
    assert (ours.status_code, ours.json()["state"], ours.json()["deleted"]) == (200, "done", 5)
    assert client.get(f"/admin/erasures/{alias}", headers=AUTH).status_code == 404, "nothing to read for the alias"
    record(client, alias, 1)
    assert client.delete(f"/admin/users/{alias}/requests", headers=AUTH).json() == {"user": alias, "deleted": 1}
    assert client.get(f"/admin/erasures/{ada}", headers=AUTH).json() == ours.json(), "moved aside, not replaced"
    # Ada erased again: one record of hers is left, under the marked name.
    record(client, ada, 1)
    assert client.delete(f"/admin/users/{ada}/requests", headers=AUTH).json() == {"user": ada, "deleted": 1}
    rows = db.execute(
        "SELECT user_name, deleted FROM erasure_jobs WHERE user_name IN (%s, %s)", (erasure.pseudonym(ada), alias)
    ).fetchall()
    assert rows == [(erasure.pseudonym(ada), 1)]


def test_of_two_records_of_one_user_the_newer_is_kept_when_one_is_moved(client: httpx.Client, db: Connection) -> None:
    ada = unique("ada")
    record(client, ada, 1)
    assert client.delete(f"/admin/users/{ada}/requests", headers=AUTH).json()["deleted"] == 1  # marked, today
    db.execute(
        "UPDATE erasure_jobs SET finished_at = finished_at - interval '2 days' WHERE user_name = %s",
        (erasure.pseudonym(ada),),
    )
    plant_unmarked(db, ada, deleted=7, days_ago=1)  # a previous-release pod finished a later one
    assert client.get(f"/admin/erasures/{ada}", headers=AUTH).json()["deleted"] == 7, "the newer record is read"
    alias = erasure.unmarked_pseudonym(ada)
    assert client.delete(f"/admin/users/{alias}/requests", headers=AUTH).status_code == 200
    assert client.get(f"/admin/erasures/{ada}", headers=AUTH).json()["deleted"] == 7
