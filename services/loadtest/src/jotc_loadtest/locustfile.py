"""What JOTC users do, for Locust: solve puzzles in every accepted form, read answers back, make
mistakes, retry with Idempotency-Key, and (with a token) look at the admin pages. Every answer
is checked: a 201 with the wrong number of jumps is a failure, and so is a refusal with the wrong
status. Task weights come from the environment (JOTC_LT_WEIGHT_<TASK>, 0 turns a task off).

Each user connects as connections.py says (bounded reuse, connect-to, TLS) and, with
JOTC_LOADTEST_TOKEN, names itself to the API as one client of the rate limit."""

from __future__ import annotations

import os
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from locust import FastHttpUser, between, events
from locust.runners import WorkerRunner

from jotc_loadtest.connections import user_connections
from jotc_loadtest.gates import apply_gates
from jotc_loadtest.reference import min_jumps
from jotc_loadtest.scenarios import INVALID, clouds, json_body

ADMIN_TOKEN = os.environ.get("JOTC_ADMIN_TOKEN", "")
DEFAULT_WEIGHTS = {
    "classic_json": 40,
    "classic_digits": 15,
    "classic_text": 10,
    "large": 3,
    "invalid": 10,
    "read_back": 15,
    "idempotent_retry": 5,
    "admin": 2,
}


def loadtest_headers(env: Mapping[str, str], name: str) -> dict[str, str]:
    """What makes the API count this user as one client of its own, as it counts each real user
    (the API's JOTC_LOADTEST_TOKEN, services/api clients.py); nothing without the token."""
    token = env.get("JOTC_LOADTEST_TOKEN", "").strip()
    return {"jotc-loadtest-token": token, "jotc-loadtest-client": name} if token else {}


def weight(task: str, env: Mapping[str, str]) -> int:
    raw = env.get(f"JOTC_LT_WEIGHT_{task.upper()}", "").strip()
    value = int(raw) if raw else DEFAULT_WEIGHTS[task]
    if task == "admin" and not env.get("JOTC_ADMIN_TOKEN", ""):
        return 0
    return max(0, value)


class JotcScenarios(FastHttpUser):
    """Every scenario, unweighted; Locust runs JotcUser below, which adds the weights."""

    abstract = True
    wait_time = between(
        float(os.environ.get("JOTC_LT_WAIT_MIN", "0.05")), float(os.environ.get("JOTC_LT_WAIT_MAX", "0.5"))
    )

    def __init__(self, environment: Any) -> None:
        # FastHttpUser builds the user's session from these two: its own connections and its name.
        # Headers a subclass set before calling this (scripts/fleet's X-Forwarded-For) are kept.
        self.client_pool = user_connections(os.environ)
        own = loadtest_headers(os.environ, f"locust-{uuid.uuid4().hex}")
        given = {name: value for name, value in (self.default_headers or {}).items() if name.lower() not in own}
        self.default_headers = {**given, **own}
        super().__init__(environment)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.user = f"locust-{uuid.uuid4().hex[:10]}@example.com"
        self.answers: deque[tuple[str, list[int], int]] = deque(maxlen=200)

    def post_and_check(self, name: str, values: list[int], max_jump: int, body: Any, **kwargs: Any) -> None:
        expected = min_jumps(values, max_jump)
        with self.client.post(
            "/jumps", name=name, catch_response=True, **({"json": body} if body is not None else {}), **kwargs
        ) as response:
            if response.status_code != 201:
                response.failure(f"expected 201, got {response.status_code}: {response.text[:200]}")
                return
            if kwargs.get("headers", {}).get("content-type") == "text/plain":
                got = int(response.text.strip())
                request_id = response.headers.get("location", "").rsplit("/", 1)[-1]
            else:
                answer = response.json()
                got = answer["jumps"]
                request_id = answer["id"]
            if got != expected:
                response.failure(f"wrong answer: {got} jumps, the reference solver says {expected}")
                return
            response.success()
            self.answers.append((request_id, values, got))

    def classic_json(self) -> None:
        values = clouds(self.rng, self.rng.randint(2, 100))
        self.post_and_check("POST /jumps [json array]", values, 2, json_body(values, self.user, 2, False, self.rng))

    def classic_digits(self) -> None:
        max_jump = self.rng.choice([2, 2, 3])
        values = clouds(self.rng, self.rng.randint(2, 100), max_jump)
        body = json_body(values, self.user, max_jump, True, self.rng)
        self.post_and_check("POST /jumps [digit string]", values, max_jump, body)

    def classic_text(self) -> None:
        values = clouds(self.rng, self.rng.randint(2, 100))
        text = f"{len(values)}\n{' '.join(map(str, values))}\n"
        self.post_and_check(
            "POST /jumps [text/plain]",
            values,
            2,
            None,
            data=text,
            headers={"content-type": "text/plain"},
            params={"user": self.user},
        )

    def large(self) -> None:
        max_jump = self.rng.choice([2, 4, 10])
        values = clouds(self.rng, self.rng.randint(2_000, 20_000), max_jump)
        body = json_body(values, self.user, max_jump, True, self.rng)
        self.post_and_check("POST /jumps [large]", values, max_jump, body)

    def invalid(self) -> None:
        case = self.rng.choice(INVALID)
        with self.client.post(
            "/jumps",
            name=f"POST /jumps [invalid: {case.name}]",
            data=case.body.decode(),
            headers={"content-type": case.content_type},
            catch_response=True,
        ) as response:
            ok = response.status_code == case.status and response.headers.get("content-type", "").startswith(
                "application/problem+json"
            )
            if ok:
                response.success()
            else:
                response.failure(f"expected problem+json {case.status}, got {response.status_code}")

    def read_back(self) -> None:
        if not self.answers:
            self.classic_json()
            return
        request_id, values, jumps = self.rng.choice(self.answers)
        with self.client.get(f"/jumps/{request_id}", name="GET /jumps/{id}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}")
            elif response.json()["jumps"] != jumps or response.json()["clouds"] != values:
                response.failure("the recorded request differs from what was sent")
            else:
                response.success()

    def idempotent_retry(self) -> None:
        values = clouds(self.rng, self.rng.randint(2, 100))
        headers = {"idempotency-key": f"locust-{uuid.uuid4()}"}
        body = json_body(values, self.user, 2, False, self.rng)
        first = self.client.post("/jumps", json=body, headers=headers, name="POST /jumps [idempotency key]")
        with self.client.post(
            "/jumps", json=body, headers=headers, name="POST /jumps [idempotent retry]", catch_response=True
        ) as again:
            if first.status_code != 201 or again.status_code != 201:
                again.failure(f"expected 201 twice, got {first.status_code} then {again.status_code}")
            elif again.json().get("id") != first.json().get("id") or again.headers.get("idempotent-replayed") != "true":
                again.failure("the retry was not a replay of the first answer")
            else:
                again.success()

    def admin(self) -> None:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        self.client.get("/admin/stats?limit=20", headers=headers, name="GET /admin/stats")
        self.client.get(f"/admin/requests?limit=20&user={self.user}", headers=headers, name="GET /admin/requests")


def user_class(env: Mapping[str, str]) -> type[JotcScenarios]:
    """The scenarios with their weights from env (0 leaves a task out). Locust reads a {task: weight}
    mapping only while it builds the class (its metaclass turns it into a list holding each task
    weight times), so the weights go into the class statement; set on the class afterwards, the
    mapping would stay a dict that Locust picks from by key, every task equally often."""
    weights: dict[Callable[[JotcScenarios], None], int] = {
        getattr(JotcScenarios, name): share for name in DEFAULT_WEIGHTS if (share := weight(name, env)) > 0
    }

    class JotcUser(JotcScenarios):
        tasks = weights  # type: ignore[assignment]  # Locust documents the mapping; its stub says list

    return JotcUser


JotcUser = user_class(os.environ)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def service_objectives(environment: Any, **_: Any) -> None:
    # Gates judge bounded headless runs; a web-UI session that is closed is not a verdict.
    headless = bool(getattr(environment.parsed_options, "headless", False))
    if headless and not isinstance(environment.runner, WorkerRunner):
        apply_gates(environment)
