"""scripts/standins without a Docker engine: its plan (which image gets which stand-in, built how and
labelled how), and what it does against a stand-in `docker` that keeps a small engine's images in a
JSON file: which images it keeps, pulls or reports, and which it lists and removes. The container
stage (deploy/container_tests) runs the same command against a real engine."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from standins import BASE_IS, LABEL, RECIPES, recipe_hash
from support import ROOT, compose_binary, compose_config

FAKE_DOCKER = """#!{python}
# A Docker CLI over a JSON file of images: info, pull, image inspect / ls / rm. Each call is logged.
import json, os, sys
state_file, log = os.environ["FAKE_DOCKER_STATE"], os.environ["FAKE_DOCKER_LOG"]
state = json.load(open(state_file))
args = sys.argv[1:]
with open(log, "a") as out:
    out.write(json.dumps(args) + "\\n")

def find(name):
    return next((i for i in state["images"] if name in i["RepoTags"] or name == i["Id"]), None)

if args[0] == "info":
    print("20.10")
elif args[0] == "pull":
    image = args[-1]
    if image not in state["registry"]:
        sys.exit("Error response from daemon: no such host")
    for other in state["images"]:
        other["RepoTags"] = [t for t in other["RepoTags"] if t != image]
    state["images"].append({{"Id": "sha256:pulled-" + image, "RepoTags": [image], "Config": {{"Labels": None}}}})
elif args[:2] == ["image", "inspect"] and "--format" in args:
    image = find(args[2])
    if image is None:
        sys.exit("Error: No such image: " + args[2])
    print(json.dumps(image["Id"]), json.dumps(image["Config"]["Labels"]))
elif args[:2] == ["image", "inspect"]:
    print(json.dumps([find(name) for name in args[2:]]))
elif args[:2] == ["image", "ls"]:
    key = args[args.index("--filter") + 1].removeprefix("label=")
    print("\\n".join(i["Id"] for i in state["images"] if key in (i["Config"]["Labels"] or {{}})))
elif args[:2] == ["image", "rm"]:
    for name in args[2:]:
        image = find(name)
        if image is None:
            sys.exit("Error: No such image: " + name)
        if name in image["RepoTags"]:
            image["RepoTags"].remove(name)
        if not image["RepoTags"] or name == image["Id"]:
            state["images"].remove(image)
else:
    sys.exit("fake docker: unexpected " + " ".join(args))
json.dump(state, open(state_file, "w"))
"""


@dataclass
class Engine:
    """The stand-in engine's state (its images, what its registry has) and the calls made to it."""

    state: Path
    log: Path
    env: dict[str, str]

    def images(self) -> dict[str, list[str]]:
        """Each image's id and its tags."""
        return {image["Id"]: image["RepoTags"] for image in json.loads(self.state.read_text())["images"]}

    def calls(self, *first: str) -> list[list[str]]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [call for call in calls if call[: len(first)] == list(first)]


def standins(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts/standins"), *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )


def image(ident: str, tags: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Id": f"sha256:{ident}", "RepoTags": tags, "Config": {"Labels": labels}}


def standin_labels(official: str = "", what: str = "", recipe: str = "") -> dict[str, str]:
    labels = {LABEL: "true", f"{LABEL}.for": official, f"{LABEL}.is": what, f"{LABEL}.recipe": recipe}
    return {key: value for key, value in labels.items() if value}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    state, log = tmp_path / "engine.json", tmp_path / "calls.log"
    state.write_text(json.dumps({"images": [], "registry": []}))
    log.touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "JOTC_COMPOSE": compose_binary(),
        "FAKE_DOCKER_STATE": str(state),
        "FAKE_DOCKER_LOG": str(log),
    }
    return Engine(state, log, env)


def with_images(engine: Engine, *images: dict[str, Any], registry: tuple[str, ...] = ()) -> None:
    engine.state.write_text(json.dumps({"images": list(images), "registry": list(registry)}))


# --- the plan ---------------------------------------------------------------------------------------


@functools.cache
def planned() -> dict[str, list[str]]:
    """scripts/standins --plan: each image and the docker build that stands in for it."""
    result = standins("--plan", env={**os.environ, "JOTC_COMPOSE": compose_binary()})
    assert result.returncode == 0, result.stderr
    builds = re.findall(r"^  (\S+): .*\n    (docker build .*)$", result.stdout, re.M)
    assert "scripts/standins --remove" in result.stdout
    return {name: shlex.split(command) for name, command in builds}


def pulled_by_the_stack() -> set[str]:
    """What Compose and the Dockerfiles pull, read here on their own: the services' images that no
    service builds, and each Dockerfile's FROM lines (the ARG defaults they name), less its stages."""
    services = compose_config("--profile", "*")["services"].values()
    names = {service["image"] for service in services} - {
        service["image"] for service in services if "build" in service
    }
    for dockerfile in (ROOT / "services").glob("*/Dockerfile"):
        text = dockerfile.read_text()
        arguments = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        for reference in re.findall(r"^FROM (\S+)", text, re.M):
            names.add(string.Template(reference).substitute(arguments))
        names -= set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))
    return names


def test_every_image_the_stack_pulls_has_a_stand_in() -> None:
    assert set(planned()) == pulled_by_the_stack()


def test_the_charts_evaluation_and_pooler_images_are_among_them() -> None:
    """The container stage runs the chart's evaluation PostgreSQL and Redis and its PgBouncer on the
    same stand-ins (Compose's pooler profile names the PgBouncer image)."""
    values = yaml.safe_load((ROOT / "deploy/helm/jotc/values.yaml").read_text())
    evaluation = values["evaluation"]
    charted = {evaluation["postgresql"]["image"], evaluation["redis"]["image"], values["pgbouncer"]["image"]}
    assert charted <= set(planned())


def test_the_pgbouncer_stand_in_says_it_is_one_and_runs_debians_pgbouncer() -> None:
    command = planned()["ghcr.io/cloudnative-pg/pgbouncer:1.24.1"]
    labels = dict(label.split("=", 1) for label in option_values(command, "--label"))
    assert "PgBouncer 1.18" in labels[f"{LABEL}.is"]
    assert "install -y --no-install-recommends pgbouncer" in (RECIPES / "pgbouncer/Dockerfile.standin").read_text()
    wrapper = RECIPES / "pgbouncer/pgbouncer"
    assert "STAND-IN" in wrapper.read_text()
    assert wrapper.stat().st_mode & 0o111  # run from the PATH, ahead of Debian's /usr/sbin/pgbouncer


def option_values(command: list[str], option: str) -> list[str]:
    return [command[at + 1] for at, word in enumerate(command) if word == option]


def test_each_stand_in_is_built_under_the_official_name_and_labelled_as_what_it_is() -> None:
    for name, command in planned().items():
        assert option_values(command, "--tag") == [name]
        labels = dict(label.split("=", 1) for label in option_values(command, "--label"))
        (recipe,) = option_values(command, "--file")
        folder = Path(recipe).parent.name
        assert ROOT / recipe == RECIPES / folder / "Dockerfile.standin"
        assert labels == standin_labels(name, labels[f"{LABEL}.is"], recipe_hash(folder)), name
        assert labels[f"{LABEL}.is"].strip(), name


def test_the_postgres_stand_in_says_it_is_one_and_which_postgresql() -> None:
    command = planned()["postgres:17-alpine"]
    labels = dict(label.split("=", 1) for label in option_values(command, "--label"))
    assert "PostgreSQL 15" in labels[f"{LABEL}.is"]
    assert "postgresql-15" in (RECIPES / "postgres/Dockerfile.standin").read_text()
    assert "STAND-IN" in (RECIPES / "postgres/entrypoint.sh").read_text()


# --- against an engine --------------------------------------------------------------------------------


def current(name: str, folder: str, what: str) -> dict[str, Any]:
    """A stand-in built from the current recipe."""
    return image(folder, [name], standin_labels(name, what, recipe_hash(folder)))


def test_official_images_are_kept_current_stand_ins_reused_and_a_registry_replaces_them(engine: Engine) -> None:
    official = image("official-python", ["python:3.11-slim-bookworm"])
    stand_ins = [
        current("ghcr.io/astral-sh/uv:0.13.9", "uv", "uv"),
        current("postgres:17-alpine", "postgres", "PostgreSQL 15 of Debian bookworm"),
        current("redis:7-alpine", "redis", "Debian's Redis 7"),
        current("ghcr.io/cloudnative-pg/pgbouncer:1.24.1", "pgbouncer", "Debian's PgBouncer 1.18"),
        current("adminer:4", "adminer", "Debian's Adminer"),
        current("redis/redisinsight:2.70", "redisinsight", "a placeholder"),
    ]
    with_images(engine, official, *stand_ins, registry=("redis:7-alpine",))
    result = standins(env=engine.env)
    assert result.returncode == 0, result.stderr
    said = dict(re.findall(r"^  (\S+)\s+(.+)$", result.stdout, re.M))
    assert said["python:3.11-slim-bookworm"] == "official (already in the engine)"
    assert said["redis:7-alpine"] == "official (pulled, in place of its stand-in)"
    assert said["postgres:17-alpine"].startswith("STAND-IN: PostgreSQL 15 of Debian bookworm")
    assert "scripts/standins --remove" in result.stdout
    assert [call[-1] for call in engine.calls("pull")] == sorted(stand["RepoTags"][0] for stand in stand_ins)
    assert engine.calls("build") == []
    # The stand-in the official Redis replaced is gone; the others stay.
    assert [call[2:] for call in engine.calls("image", "rm")] == [["sha256:redis"]]
    assert engine.images()["sha256:pulled-redis:7-alpine"] == ["redis:7-alpine"]
    assert "sha256:redis" not in engine.images()


def test_list_and_remove_take_every_labelled_image_and_nothing_else(engine: Engine) -> None:
    python = standin_labels("python:3.11-slim-bookworm", "Debian bookworm's Python 3.11", "0123456789abcdef")
    built_on_python = {**python, "org.opencontainers.image.title": "jotc-api"}
    with_images(
        engine,
        image("base", ["jotc-standin/debian:bookworm"], standin_labels(what=BASE_IS)),
        image("older", ["redis/redisinsight:2.70"], {LABEL: "an-old-recipe-hash"}),  # before the labels said more
        image("python", ["python:3.11-slim-bookworm"], python),
        image("api", ["jotc-api:local"], built_on_python),
        image("stale-build", [], built_on_python),
        image("official-redis", ["redis:7-alpine"]),
        image("someone-elses", ["someone/else:1"], {"org.example.standin": "true"}),
    )
    listed = standins("--list", env=engine.env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"jotc-api:local\s+built on the stand-in for python:3.11-slim-bookworm", listed.stdout)
    assert re.search(r"python:3.11-slim-bookworm\s+stand-in for python:3.11-slim-bookworm: Debian", listed.stdout)
    assert "redis:7-alpine" not in listed.stdout
    assert engine.calls("image", "rm") == []

    removed = standins("--remove", env=engine.env)
    assert removed.returncode == 0, removed.stderr
    # What was built on a stand-in first, then the stand-ins, then their base: each goes whole.
    assert [call[2:] for call in engine.calls("image", "rm")] == [
        ["sha256:stale-build"],
        ["jotc-api:local"],
        ["redis/redisinsight:2.70"],
        ["python:3.11-slim-bookworm"],
        ["jotc-standin/debian:bookworm"],
    ]
    assert engine.images() == {"sha256:official-redis": ["redis:7-alpine"], "sha256:someone-elses": ["someone/else:1"]}
    again = standins("--remove", env=engine.env)
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stdout
