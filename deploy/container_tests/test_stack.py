"""`docker compose up` for real: start, use, break and remove the stack in a Docker engine.

The whole stack runs once for the module (on the images built from the repository's own files, with
the settings of `.env.example`); the core-only variant runs on its own after it, and last a project
is built and cleaned up the way the README says.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from common import run
from engine import Engine
from stage import Project, env_example, project

GAME = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "container-stage@example.com"}
# Adminer's driver PostgreSQL: selected in its login form (the stand-in, newer official images), or
# chosen by the official adminer:4's script.
PGSQL_CHOSEN = re.compile(r"<option value=[\"']?pgsql[\"']? selected|\.value\s*=\s*\"pgsql\"")


@pytest.fixture(scope="module")
def stack(engine: Engine, built: None) -> Iterator[Project]:
    whole = project("jotc-ci")
    try:
        whole.timed("docker compose up --wait", "up", "--wait", "--wait-timeout", "300")
        yield whole
    finally:
        whole("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def service(stack: Project, name: str) -> dict[str, Any]:
    matches = [container for container in stack.containers() if container["Service"] == name]
    assert len(matches) == 1, f"one container of {name} expected, found {matches}"
    return matches[0]


def test_the_migration_ran_once_and_exited_zero(stack: Project) -> None:
    migrate = service(stack, "migrate")
    assert migrate["State"] == "exited"
    assert migrate["ExitCode"] == 0, stack("logs", "migrate").stdout


def test_every_long_running_service_is_up_and_the_api_healthy(stack: Project) -> None:
    states = {container["Service"]: (container["State"], container["Health"]) for container in stack.containers()}
    for name in ("postgres", "redis", "api", "adminer", "redisinsight", "locust-master", "locust-worker"):
        assert states[name][0] == "running", states
    assert states["api"][1] == "healthy"
    assert states["postgres"][1] == "healthy"


def test_published_ports_listen_on_loopback_only(engine: Engine, stack: Project) -> None:
    for container in stack.containers():
        for publisher in container.get("Publishers") or []:
            if publisher.get("PublishedPort"):
                assert publisher["URL"] in {"127.0.0.1"}, (container["Service"], publisher)


def test_a_jump_round_trips_through_the_published_api(stack: Project) -> None:
    created = httpx.post(stack.url("API_PORT", "/jumps"), json=GAME, timeout=10)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert (answer["jumps"], answer["path"]) == (4, [0, 1, 3, 4, 6])
    read = httpx.get(stack.url("API_PORT", created.headers["location"]), timeout=10)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == answer["id"]
    assert read.json()["clouds"] == GAME["clouds"]


def test_the_admin_api_answers_with_the_token_of_env_example(stack: Project) -> None:
    token = env_example()["JOTC_ADMIN_TOKEN"]
    assert token
    allowed = httpx.get(stack.url("API_PORT", "/admin/stats"), headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["total_requests"] >= 1
    refused = httpx.get(stack.url("API_PORT", "/admin/stats"), headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401


def database(stack: Project) -> psycopg.Connection[Any]:
    """The stack's PostgreSQL through its published port, as `.env.example` sets it up."""
    settings = env_example()
    return psycopg.connect(
        host="127.0.0.1",
        port=stack.ports["POSTGRES_PORT"],
        user=settings["POSTGRES_USER"],
        password=settings["POSTGRES_PASSWORD"],
        dbname=settings["POSTGRES_DB"],
        autocommit=True,
    )


def stored(stack: Project, identifiers: set[str]) -> set[str]:
    """Which of these requests have a row."""
    with database(stack) as connection:
        rows = connection.execute("SELECT id FROM jump_requests WHERE id = ANY(%s::uuid[])", [list(identifiers)])
        return {str(row[0]) for row in rows}


def test_the_retention_one_shot_deletes_what_is_older_than_the_cutoff(stack: Project) -> None:
    """`JOTC_RETENTION_DAYS=90 docker compose run --rm retention`, as deploy/compose/README.md says:
    jotc-retention runs once on the stack's database (not the API: the image's entrypoint is
    jotc-api) and exits 0; requests older than 90 days are gone, newer ones kept."""
    recorded = []
    for _ in range(4):
        created = httpx.post(stack.url("API_PORT", "/jumps"), json={**GAME, "user": "retention@example.com"})
        assert created.status_code == 201, created.text
        recorded.append(created.json()["id"])
    old, recent = set(recorded[:2]), set(recorded[2:])
    with database(stack) as connection:
        connection.execute(
            "UPDATE jump_requests SET created_at = created_at - interval '120 days' WHERE id = ANY(%s::uuid[])",
            [list(old)],
        )
    ran = stack("run", "--rm", "retention", env={"JOTC_RETENTION_DAYS": "90"}, timeout=300, check=False)
    said = ran.stdout + ran.stderr
    assert ran.returncode == 0, said[-4000:]
    assert "Granian" not in said, said[-4000:]  # the API's server never started
    assert stored(stack, old | recent) == recent, said[-4000:]


def test_adminer_and_redisinsight_answer_http(stack: Project) -> None:
    for variable in ("ADMINER_PORT", "REDISINSIGHT_PORT"):
        answer = httpx.get(stack.url(variable, "/"), timeout=10, follow_redirects=True)
        assert answer.status_code == 200, (variable, answer.status_code)


def test_adminer_opens_on_the_stacks_postgresql_and_browses_it(stack: Project) -> None:
    """Its login form has PostgreSQL, server `postgres`, the stack's user and database filled in: the
    password of `.env.example` is all it takes to see JOTC's tables."""
    settings = env_example()
    with httpx.Client(base_url=stack.url("ADMINER_PORT"), timeout=10, follow_redirects=True) as browser:
        form = browser.get("/")
        assert form.status_code == 200, form.text[:3000]
        assert PGSQL_CHOSEN.search(form.text), form.text[:3000]
        filled = {"server": "postgres", "username": settings["POSTGRES_USER"], "db": settings["POSTGRES_DB"]}
        for field, value in filled.items():
            assert re.search(rf"""name=["']auth\[{field}\]["'][^>]*value=["']{value}["']""", form.text), field
        login = {f"auth[{field}]": value for field, value in filled.items()}
        logged_in = browser.post(
            "/", data={**login, "auth[driver]": "pgsql", "auth[password]": settings["POSTGRES_PASSWORD"]}
        )
    assert logged_in.status_code == 200, logged_in.text[:3000]
    assert "jump_requests" in logged_in.text, logged_in.text[:3000]


def test_the_locust_ui_answers(stack: Project) -> None:
    assert httpx.get(stack.url("LOCUST_PORT", "/"), timeout=10).status_code == 200


def test_locust_containers_resolve_the_engine_host(stack: Project) -> None:
    """The Dockerfile's advice (JOTC_TARGET=http://host.docker.internal:4000) works on a Linux engine."""
    for name in ("locust-master", "locust-worker"):
        lookup = stack(
            "exec", "-T", name, "python", "-c", "import socket; print(socket.gethostbyname('host.docker.internal'))"
        )
        assert lookup.stdout.strip(), name


def test_a_headless_locust_run_inside_its_container_meets_the_gates(stack: Project) -> None:
    locust = stack(
        "run",
        "--rm",
        "--no-deps",
        "-e",
        "LOCUST_ROLE=headless",
        "-e",
        "LOCUST_USERS=4",
        "-e",
        "LOCUST_SPAWN_RATE=4",
        "-e",
        "LOCUST_RUN_TIME=10s",
        # Latency gates a shared engine can miss with nothing wrong: judged against a slow fake in
        # services/loadtest's tests; here only a hang reaches them, and the failure ratio still binds.
        "-e",
        "JOTC_SLO_P95_MS=30000",
        "-e",
        "JOTC_SLO_P99_MS=30000",
        "locust-master",
        timeout=120,
        check=False,
    )
    output = locust.stdout + locust.stderr
    assert locust.returncode == 0, output[-4000:]
    assert "objective" in output.lower() or "slo" in output.lower(), output[-4000:]


class SteadyLoad:
    """One client posting every 50 ms until stopped; keeps every answer's status and id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str | None]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                try:
                    answer = client.post(self.url, json=GAME)
                    identifier = answer.json().get("id") if answer.status_code == 201 else None
                    self.answers.append((time.monotonic(), answer.status_code, identifier))
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                self.stopping.wait(0.05)

    def acknowledged_after(self, moment: float) -> int:
        return sum(1 for at, status, _ in self.answers if at > moment and status == 201)


def test_postgres_restarted_under_load_loses_nothing_and_the_api_recovers(engine: Engine, stack: Project) -> None:
    api_before = service(stack, "api")
    started_at = inspect(engine, api_before["ID"], "{{.State.StartedAt}} {{.RestartCount}}")
    load = SteadyLoad(stack.url("API_PORT", "/jumps"))
    load.thread.start()
    try:
        deadline = time.monotonic() + 30
        while load.acknowledged_after(0) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        stack("restart", "postgres", timeout=120)
        restarted = time.monotonic()
        deadline = restarted + 60
        while load.acknowledged_after(restarted) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        load.stopping.set()
        load.thread.join(timeout=30)
    assert load.acknowledged_after(restarted) >= 20, "the API did not recover after PostgreSQL restarted"
    statuses = {status for _, status, _ in load.answers}
    assert statuses <= {201, 503}, f"only 201 or 503 may answer while PostgreSQL restarts, saw {statuses}"
    assert not load.errors, load.errors[:5]
    assert inspect(engine, api_before["ID"], "{{.State.StartedAt}} {{.RestartCount}}") == started_at
    acknowledged = {identifier for _, status, identifier in load.answers if status == 201 and identifier}
    assert acknowledged - stored(stack, acknowledged) == set(), "acknowledged requests without a row"


def inspect(engine: Engine, container: str, template: str) -> str:
    return str(run(engine.cli, "inspect", "--format", template, container).stdout.strip())


def test_down_with_volumes_leaves_nothing_of_the_project(engine: Engine, stack: Project) -> None:
    stack("down", "--volumes", "--remove-orphans", "--timeout", "20")
    assert stack.leftovers(engine.cli) == {}


def test_the_core_only_variant_comes_up_and_serves(engine: Engine, built: None) -> None:
    core = project("jotc-ci-core", "deploy/compose/core.yml")
    try:
        core.timed("core.yml up --wait", "up", "--wait", "--wait-timeout", "300")
        assert {container["Service"] for container in core.containers()} == {"postgres", "redis", "migrate", "api"}
        created = httpx.post(core.url("API_PORT", "/jumps"), json=GAME, timeout=10)
        assert created.status_code == 201, created.text
    finally:
        core("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
    assert core.leftovers(engine.cli) == {}


def test_the_readmes_clean_up_leaves_no_image_of_the_project(engine: Engine, built: None) -> None:
    """`docker compose build`, then `docker compose down --volumes --rmi local`: nothing the project
    built is left, tagged or not (a Locust image built once per service left the first one behind)."""
    fresh = project("jotc-ci-clean")
    try:
        fresh.timed("docker compose build (cached)", "build")
        built_images = run(
            engine.cli, "image", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={fresh.name}"
        )
        assert len(set(built_images.stdout.split())) == 3, "one image for each Dockerfile"
    finally:
        fresh("down", "--volumes", "--rmi", "local", "--remove-orphans", "--timeout", "20")
    assert fresh.leftovers(engine.cli) == {}
