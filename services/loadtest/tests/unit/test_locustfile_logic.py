"""The locustfile's logic, in process: task weights from the environment, the task mix a user
picks, and the check of every answer (through a stand-in for Locust's HTTP client, so no server
and no gevent). Locust is imported with its gevent patching turned off: the tests' process must
keep its real sockets and threads. The same mix as Locust loads the file, in a separate process:
integration/test_locustfile_loading.py."""

from __future__ import annotations

import collections
import json
import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from support import ADMIN_TOKEN, SKIP_MONKEY_PATCH, assert_mix

from jotc_loadtest.connections import Connections
from jotc_loadtest.reference import min_jumps
from jotc_loadtest.scenarios import INVALID


def import_locustfile() -> ModuleType:
    """jotc_loadtest.locustfile, with Locust's gevent patching off for the import only (the
    variable must not reach the Locust processes that other tests start)."""
    before = os.environ.get(SKIP_MONKEY_PATCH)
    os.environ[SKIP_MONKEY_PATCH] = "1"
    try:
        import jotc_loadtest.locustfile as module  # after the variable is set
    finally:
        if before is None:
            del os.environ[SKIP_MONKEY_PATCH]
        else:
            os.environ[SKIP_MONKEY_PATCH] = before
    return module


locustfile = import_locustfile()
from locust.env import Environment  # noqa: E402 - Locust is imported above, unpatched
from locust.runners import WorkerRunner  # noqa: E402
from locust.user.task import DefaultTaskSet  # noqa: E402

PICKS = 20_000


def user_of(env: dict[str, str]) -> Any:
    """A user of the class user_class(env) builds, as the runner makes one; never connects."""
    user_class = locustfile.user_class(env)
    environment = Environment(user_classes=[user_class])
    environment._filter_tasks_by_tags()  # what the runner does before it spawns users
    user_class.host = "http://127.0.0.1:9"
    return user_class(environment)


def task_shares(env: dict[str, str]) -> dict[str, float]:
    user = user_of(env)
    random.seed(20261127)
    picks = collections.Counter(DefaultTaskSet(user).get_next_task().__name__ for _ in range(PICKS))
    return {task: count / PICKS for task, count in picks.items()}


def test_the_task_mix_follows_the_default_weights() -> None:
    assert_mix(task_shares({"JOTC_ADMIN_TOKEN": ADMIN_TOKEN}), locustfile.DEFAULT_WEIGHTS)


def test_the_task_mix_follows_weights_from_the_environment() -> None:
    changed = {"JOTC_LT_WEIGHT_CLASSIC_JSON": "5", "JOTC_LT_WEIGHT_LARGE": "0", "JOTC_LT_WEIGHT_INVALID": "60"}
    # No admin token: the admin task is off as well.
    expected = {**locustfile.DEFAULT_WEIGHTS, "classic_json": 5, "large": 0, "invalid": 60, "admin": 0}
    assert_mix(task_shares(changed), expected)


def test_weights() -> None:
    weight = locustfile.weight
    assert weight("classic_json", {}) == 40, "the default weight"
    assert weight("classic_json", {"JOTC_LT_WEIGHT_CLASSIC_JSON": " 7 "}) == 7, "a weight from the environment"
    assert weight("large", {"JOTC_LT_WEIGHT_LARGE": "-3"}) == 0, "a negative weight turns the task off"
    assert weight("admin", {}) == 0, "no admin token: no admin task"
    assert weight("admin", {"JOTC_ADMIN_TOKEN": "t"}) == 2, "with a token, the admin task's default"


def test_with_the_load_test_token_each_user_names_itself() -> None:
    assert locustfile.loadtest_headers({}, "locust-a") == {}, "no token: the API counts the user by its address"
    token = {"JOTC_LOADTEST_TOKEN": " the-swarms-token-of-32-characters-or-more \n"}  # pragma: allowlist secret
    assert locustfile.loadtest_headers(token, "locust-a") == {
        "jotc-loadtest-token": "the-swarms-token-of-32-characters-or-more",  # pragma: allowlist secret
        "jotc-loadtest-client": "locust-a",
    }


def test_each_user_has_connections_of_its_own() -> None:
    first, second = user_of({}), user_of({})
    assert isinstance(first.client.client.clientpool, Connections)
    assert first.client.client.clientpool is not second.client.client.clientpool


class Response:
    """What Locust's client returns, with catch_response=True or without."""

    def __init__(self, status: int, body: Any = None, text: str | None = None, headers: dict[str, str] | None = None):
        self.status_code = status
        self.body = body
        self.text = text if text is not None else json.dumps(body)
        self.headers = headers or {"content-type": "application/json"}
        self.verdict: str | None = None

    def json(self) -> Any:
        return self.body

    def success(self) -> None:
        self.verdict = "success"

    def failure(self, message: str) -> None:
        self.verdict = f"failure: {message}"

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *_: object) -> None:
        pass


class FakeApi:
    """Answers as the API does (or, told to, wrongly) and keeps every response by request name."""

    def __init__(self, *, off_by: int = 0, status: int | None = None, replay: bool = True) -> None:
        self.off_by, self.status, self.replay = off_by, status, replay
        self.recorded: dict[str, tuple[list[int], int]] = {}
        self.keys: dict[str, str] = {}
        self.sent: dict[str, list[tuple[str, dict[str, Any], Response]]] = collections.defaultdict(list)

    def post(self, path: str, *, name: str, **kwargs: Any) -> Response:
        response = self.answer_post(name, kwargs)
        self.sent[name].append((path, kwargs, response))
        return response

    def get(self, path: str, *, name: str, **kwargs: Any) -> Response:
        if path.startswith("/jumps/"):
            found = self.recorded.get(path.rsplit("/", 1)[-1])
            if found is None:
                response = Response(self.status or 404, {"title": "not found"})
            else:
                values, jumps = found
                response = Response(self.status or 200, {"clouds": values, "jumps": jumps + self.off_by})
        else:
            response = Response(200, {"items": []})
        self.sent[name].append((path, kwargs, response))
        return response

    def answer_post(self, name: str, kwargs: dict[str, Any]) -> Response:
        if name.startswith("POST /jumps [invalid: "):
            case = next(case for case in INVALID if name == f"POST /jumps [invalid: {case.name}]")
            return Response(
                self.status or case.status, {"title": "refused"}, headers={"content-type": "application/problem+json"}
            )
        if self.status is not None:
            return Response(self.status, {"title": "broken"})
        headers = kwargs.get("headers", {})
        key = headers.get("idempotency-key")
        if "json" in kwargs:
            body = kwargs["json"]
            raw = body["clouds"]
            values = [int(c) for c in raw if c.isdigit()] if isinstance(raw, str) else list(raw)
            max_jump = body["max_jump"]
        else:
            values = [int(v) for v in kwargs["data"].splitlines()[1].split()]
            max_jump = 2
        if key in self.keys and self.replay:
            request_id, replayed = self.keys[key], True
        else:
            request_id, replayed = str(uuid.uuid4()), False
        jumps = (min_jumps(values, max_jump) or 0) + self.off_by
        self.recorded[request_id] = (values, jumps)
        if key is not None:
            self.keys[key] = request_id
        extra = {"idempotent-replayed": "true"} if replayed else {}
        if headers.get("content-type") == "text/plain":
            return Response(201, None, text=f"{jumps}\n", headers={"location": f"/jumps/{request_id}", **extra})
        return Response(201, {"id": request_id, "jumps": jumps}, headers={"content-type": "application/json", **extra})


@contextmanager
def user_against(api: FakeApi) -> Iterator[Any]:
    user = user_of({"JOTC_ADMIN_TOKEN": ADMIN_TOKEN})
    user.client = api
    user.on_start()
    user.rng = random.Random(42)
    yield user


def verdicts(api: FakeApi, name: str) -> list[str | None]:
    return [response.verdict for _, _, response in api.sent[name]]


@pytest.mark.parametrize(
    ("task", "name"),
    [
        ("classic_json", "POST /jumps [json array]"),
        ("classic_digits", "POST /jumps [digit string]"),
        ("classic_text", "POST /jumps [text/plain]"),
        ("large", "POST /jumps [large]"),
    ],
)
def test_right_answers_succeed_and_are_remembered(task: str, name: str) -> None:
    api = FakeApi()
    with user_against(api) as user:
        for _ in range(5):
            getattr(user, task)()
        assert verdicts(api, name) == ["success"] * 5, f"{task}: {verdicts(api, name)}"
        assert len(user.answers) == 5, f"{task}: {len(user.answers)} answers remembered, expected 5"


def test_a_large_game_is_large() -> None:
    api = FakeApi()
    with user_against(api) as user:
        user.large()
    ((_, kwargs, _),) = api.sent["POST /jumps [large]"]
    body = kwargs["json"]
    n = len([c for c in body["clouds"] if c.isdigit()])
    assert 2_000 <= n <= 20_000, f"a large game of {n} clouds"
    assert body["max_jump"] in {2, 4, 10}, f"max_jump {body['max_jump']}"


@pytest.mark.parametrize("task", ["classic_json", "classic_text"])
def test_a_wrong_number_of_jumps_is_a_failure(task: str) -> None:
    api = FakeApi(off_by=1)
    with user_against(api) as user:
        getattr(user, task)()
        ((_, _, response),) = next(iter(api.sent.values()))
        assert response.verdict is not None, "no verdict"
        assert response.verdict.startswith("failure: wrong answer: "), response.verdict
        assert "the reference solver says" in response.verdict, response.verdict
        assert not user.answers, "a wrong answer was remembered for reading back"


def test_a_refusal_of_a_valid_game_is_a_failure() -> None:
    api = FakeApi(status=500)
    with user_against(api) as user:
        user.classic_json()
    assert verdicts(api, "POST /jumps [json array]") == ['failure: expected 201, got 500: {"title": "broken"}']


def test_invalid_requests_must_be_refused_with_their_status() -> None:
    api = FakeApi()
    with user_against(api) as user:
        for _ in range(30):
            user.invalid()
    results = {name: verdicts(api, name) for name in api.sent}
    assert len(results) > 3, f"30 picks covered only {sorted(results)}"
    assert all(set(v) == {"success"} for v in results.values()), f"verdicts: {results}"
    wrong = FakeApi(status=200)
    with user_against(wrong) as user:
        user.invalid()
    ((name, sent),) = wrong.sent.items()
    case = next(case for case in INVALID if name.endswith(f"{case.name}]"))
    assert sent[0][2].verdict == f"failure: expected problem+json {case.status}, got 200", sent[0][2].verdict


def test_reading_back_compares_the_recorded_request() -> None:
    api = FakeApi()
    with user_against(api) as user:
        user.read_back()  # nothing to read yet: solves a game instead
        assert verdicts(api, "POST /jumps [json array]") == ["success"], "read_back with no answers"
        user.read_back()
        assert verdicts(api, "GET /jumps/{id}") == ["success"], f"read back: {verdicts(api, 'GET /jumps/{id}')}"
        api.off_by = 1  # the stored answer now differs from what was returned
        user.read_back()
        api.status = 404
        user.read_back()
    assert verdicts(api, "GET /jumps/{id}")[1:] == [
        "failure: the recorded request differs from what was sent",
        "failure: expected 200, got 404",
    ], verdicts(api, "GET /jumps/{id}")


def test_an_idempotent_retry_must_replay_the_first_answer() -> None:
    api = FakeApi()
    with user_against(api) as user:
        user.idempotent_retry()
    assert verdicts(api, "POST /jumps [idempotent retry]") == ["success"], verdicts(
        api, "POST /jumps [idempotent retry]"
    )
    fresh = FakeApi(replay=False)
    with user_against(fresh) as user:
        user.idempotent_retry()
    assert verdicts(fresh, "POST /jumps [idempotent retry]") == [
        "failure: the retry was not a replay of the first answer"
    ]
    broken = FakeApi(status=503)
    with user_against(broken) as user:
        user.idempotent_retry()
    assert verdicts(broken, "POST /jumps [idempotent retry]") == ["failure: expected 201 twice, got 503 then 503"]


def test_the_admin_task_reads_both_admin_pages() -> None:
    api = FakeApi()
    with user_against(api) as user:
        user.admin()
    assert sorted(api.sent) == ["GET /admin/requests", "GET /admin/stats"], f"requests sent: {sorted(api.sent)}"
    ((path, kwargs, _),) = api.sent["GET /admin/requests"]
    assert path == f"/admin/requests?limit=20&user={user.user}", path
    assert kwargs["headers"]["authorization"].startswith("Bearer "), kwargs


def test_gates_judge_headless_runs_on_the_master_only(monkeypatch: pytest.MonkeyPatch) -> None:
    judged = []
    monkeypatch.setattr(locustfile, "apply_gates", judged.append)

    class Worker(WorkerRunner):  # only what isinstance() sees: no master to connect to
        def __init__(self) -> None:
            pass

        def __del__(self) -> None:
            pass

    worker = Worker()
    runs = {
        "headless": SimpleNamespace(parsed_options=SimpleNamespace(headless=True), runner=None),
        "web UI": SimpleNamespace(parsed_options=SimpleNamespace(headless=False), runner=None),
        "headless worker": SimpleNamespace(parsed_options=SimpleNamespace(headless=True), runner=worker),
    }
    for run in runs.values():
        locustfile.service_objectives(run)
    assert judged == [runs["headless"]], f"judged {len(judged)} runs; only the headless master's should be"


def test_headers_a_subclass_sets_before_init_are_kept_beside_the_load_tests_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scripts/fleet's users each state an address of their own in X-Forwarded-For before the
    scenarios' __init__ runs; dropping it counted the whole swarm as one client of the rate limit."""
    base = locustfile.user_class({})

    class Addressed(base):  # type: ignore[misc,valid-type]
        def __init__(self, environment: Any) -> None:
            self.default_headers = {"X-Forwarded-For": "198.18.0.7"}
            super().__init__(environment)

    Addressed.host = "http://127.0.0.1:9"
    environment = Environment(user_classes=[Addressed])
    monkeypatch.delenv("JOTC_LOADTEST_TOKEN", raising=False)
    assert Addressed(environment).default_headers == {"X-Forwarded-For": "198.18.0.7"}
    monkeypatch.setenv("JOTC_LOADTEST_TOKEN", "t" * 40)
    headers = Addressed(environment).default_headers
    assert headers["X-Forwarded-For"] == "198.18.0.7"
    assert headers["jotc-loadtest-token"] == "t" * 40
