"""GET /admin/stats on the real server, with users posting while an administrator pages: pages by
user name (the one key a request never changes) list every user exactly once; the sorts a request
changes (requests, last_request_at) answer one page and refuse a cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import AUTH, fresh_database, start_api

USERS = [f"pager-{i:02}" for i in range(10)]


@pytest.fixture(scope="module")
def http(tmp_root: Path) -> Iterator[httpx.Client]:
    """The real server on a database of its own holding exactly USERS, pager-00 with the most requests."""
    with fresh_database() as url:
        server = start_api(url, tmp_root, JOTC_WORKERS="1")
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                for rank, user in enumerate(USERS):
                    for _ in range(len(USERS) - rank):
                        post(client, user)
                yield client
        finally:
            server.stop()


def post(client: httpx.Client, user: str) -> None:
    assert client.post("/jumps", json={"clouds": [0, 0], "user": user}).status_code == 201


def stats(client: httpx.Client, **params: Any) -> httpx.Response:
    return client.get("/admin/stats", params=params, headers=AUTH)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_user_who_posts_between_pages_is_neither_skipped_nor_repeated(http: httpx.Client, order: str) -> None:
    listed: list[str] = []
    cursor = None
    for page_number in range(len(USERS)):
        answer = stats(http, sort="user", order=order, limit=3, **({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        page = answer.json()
        listed += [entry["user"] for entry in page["users"]]
        cursor = page["next_cursor"]
        assert page["complete"] is (cursor is None)
        if cursor is None:
            break
        if page_number == 0:
            # Between two pages: one user already listed and one still to come post again, as
            # they would move in a listing by requests or last request.
            post(http, listed[-1])
            post(http, next(user for user in sorted(USERS, reverse=order == "desc") if user not in listed))
    assert listed == sorted(USERS, reverse=order == "desc")


@pytest.mark.parametrize("sort", ["requests", "last_request_at"])
def test_sorts_a_request_changes_answer_one_page_and_say_whether_it_lists_everyone(
    http: httpx.Client, sort: str
) -> None:
    first = stats(http, sort=sort, limit=3).json()
    assert (len(first["users"]), first["next_cursor"], first["complete"]) == (3, None, False)
    key = {
        "requests": lambda u: (u["requests"], u["user"]),
        "last_request_at": lambda u: (u["last_request_at"], u["user"]),
    }
    assert first["users"] == sorted(first["users"], key=key[sort], reverse=True)
    everyone = stats(http, sort=sort, limit=1000).json()
    assert (everyone["next_cursor"], everyone["complete"]) == (None, True)
    assert sorted(entry["user"] for entry in everyone["users"]) == USERS
    assert set(first) == {"total_requests", "total_users", "users", "next_cursor", "complete"}


@pytest.mark.parametrize("sort", ["requests", "last_request_at"])
def test_a_cursor_with_a_sort_a_request_changes_is_refused(http: httpx.Client, sort: str) -> None:
    cursor = stats(http, sort="user", order="desc", limit=1).json()["next_cursor"]
    assert cursor
    refused = stats(http, sort=sort, cursor=cursor)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "cursor"
    assert "sort=user" in error["message"]
