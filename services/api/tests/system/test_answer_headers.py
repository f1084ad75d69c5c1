"""What the real server's answers say to caches and browsers: an answer carrying a record (POST
/jumps, POST /jotc, their replays, GET and HEAD /jumps/{id}) and every other answer that names no
policy of its own is `Cache-Control: no-store`; the docs UI's files keep their own; no page may be
framed, /schema (which takes the admin token) first of all."""

from __future__ import annotations

import uuid

import httpx
import pytest

NO_FRAMING = {"x-frame-options": "DENY", "content-security-policy": "frame-ancestors 'none'"}


def stored_by_nobody(answer: httpx.Response) -> None:
    assert answer.headers.get_list("cache-control") == ["no-store"], (
        f"{answer.request.method} {answer.request.url.path} → {answer.status_code}: "
        f"Cache-Control {answer.headers.get_list('cache-control')}"
    )


def test_every_answer_carrying_a_record_is_no_store_replays_included(server_client: httpx.Client) -> None:
    user = f"cache-{uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": f"cache-{uuid.uuid4().hex}"}
    body = {"clouds": [0, 0, 1, 0], "user": user}
    answers = [
        server_client.post("/jumps", json=body, headers=key),
        server_client.post("/jumps", json=body, headers=key),  # the replay
        server_client.post(
            "/jumps", params={"user": user}, content=b"4\n0 0 1 0\n", headers={"content-type": "text/plain"}
        ),
        server_client.post("/jotc", json=body, headers={"Idempotency-Key": key["Idempotency-Key"] + "-jotc"}),
        server_client.post("/jotc", json=body, headers={"Idempotency-Key": key["Idempotency-Key"] + "-jotc"}),
    ]
    assert [a.status_code for a in answers] == [201, 201, 201, 200, 200], [a.text for a in answers]
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", None, None, "true"]
    location = answers[0].headers["location"]
    record = server_client.get(location)
    head = server_client.head(location)
    assert (record.status_code, record.json()["user"], head.status_code, head.content) == (200, user, 200, b"")
    for answer in [*answers, record, head]:
        stored_by_nobody(answer)


def test_refusals_and_operational_answers_are_no_store_too(server_client: httpx.Client) -> None:
    for answer in (
        server_client.get(f"/jumps/{uuid.uuid4()}"),  # a record that is not, or no longer, there
        server_client.post("/jumps", json={"clouds": [0, 1, 1, 0]}),
        server_client.get("/healthz"),
        server_client.get("/schema"),
        server_client.get("/schema/openapi.json"),
    ):
        stored_by_nobody(answer)


def test_the_docs_ui_files_keep_their_own_cache_policy(server_client: httpx.Client) -> None:
    answer = server_client.get("/schema/swagger-ui/swagger-ui.css")
    assert answer.status_code == 200
    assert answer.headers.get_list("cache-control") == ["max-age=86400, public"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/schema"), ("HEAD", "/schema"), ("GET", "/schema/swagger")])
def test_no_page_may_be_framed(server_client: httpx.Client, method: str, path: str) -> None:
    answer = server_client.request(method, path)
    assert answer.headers["content-type"].startswith("text/html"), answer.headers
    assert {name: answer.headers.get(name) for name in NO_FRAMING} == NO_FRAMING, (answer.status_code, path)
