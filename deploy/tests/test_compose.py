"""docker-compose.yml and its fragments, checked offline with `docker compose config`."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ROOT, committed_files, compose, compose_config

VARIANTS = {
    "default": (),
    "core only": ("-f", "deploy/compose/core.yml"),
    "with .env.example": ("--env-file", ".env.example"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_config_is_valid(variant: str) -> None:
    result = compose(*VARIANTS[variant], "config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_config()


def published(service: dict[str, Any]) -> dict[int, int]:
    return {int(port["published"]): int(port["target"]) for port in service.get("ports", [])}


def test_every_service_of_the_original_is_there(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "adminer",
        "redisinsight",
        "locust-master",
        "locust-worker",
    }


@pytest.mark.parametrize(
    ("service", "ports"),
    [
        ("api", {4000: 4000}),
        ("postgres", {5432: 5432}),
        ("redis", {6379: 6379}),
        ("adminer", {8080: 8080}),
        ("redisinsight", {8001: 5540}),
        ("locust-master", {8089: 8089}),
        ("locust-worker", {}),
        ("migrate", {}),
    ],
)
def test_ports(stack: dict[str, Any], service: str, ports: dict[int, int]) -> None:
    assert published(stack["services"][service]) == ports


@pytest.mark.parametrize("service", ["postgres", "redis", "api"])
def test_stateful_services_and_the_api_have_healthchecks(stack: dict[str, Any], service: str) -> None:
    check = stack["services"][service]["healthcheck"]
    assert check["test"]
    assert not check.get("disable")


def test_api_health_is_readiness(stack: dict[str, Any]) -> None:
    assert any("/readyz" in part for part in stack["services"]["api"]["healthcheck"]["test"])


def conditions(stack: dict[str, Any], service: str) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in stack["services"][service].get("depends_on", {}).items()}


def test_dependency_conditions(stack: dict[str, Any]) -> None:
    assert conditions(stack, "migrate") == {"postgres": "service_healthy"}
    assert conditions(stack, "api") == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert conditions(stack, "locust-master") == {"api": "service_healthy"}
    assert conditions(stack, "locust-worker") == {"locust-master": "service_started"}
    assert conditions(stack, "adminer") == {"postgres": "service_healthy"}
    assert conditions(stack, "redisinsight") == {"redis": "service_healthy"}


def test_migration_is_one_shot_from_its_own_folder(stack: dict[str, Any]) -> None:
    migrate = stack["services"]["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["build"]["context"] == str(ROOT / "services/db-migrations")


def test_images_are_built_from_each_service_folder(stack: dict[str, Any]) -> None:
    assert stack["services"]["api"]["build"]["context"] == str(ROOT / "services/api")
    for locust in ("locust-master", "locust-worker"):
        assert stack["services"][locust]["build"]["context"] == str(ROOT / "services/loadtest")


def test_named_volumes(stack: dict[str, Any]) -> None:
    assert {"postgres-data", "redisinsight-data"} <= set(stack["volumes"])
    postgres_mounts = stack["services"]["postgres"]["volumes"]
    assert any(m["type"] == "volume" and m["source"] == "postgres-data" for m in postgres_mounts)


def test_api_runs_read_only_with_a_tmpfs(stack: dict[str, Any]) -> None:
    api = stack["services"]["api"]
    assert api["read_only"] is True
    assert "/tmp" in api["tmpfs"]


def test_api_has_develop_watch(stack: dict[str, Any]) -> None:
    watches = stack["services"]["api"]["develop"]["watch"]
    assert any(w["path"].endswith("services/api/src") and w["action"] == "rebuild" for w in watches)


def test_workers_scale_and_find_their_master(stack: dict[str, Any]) -> None:
    worker = stack["services"]["locust-worker"]
    assert "container_name" not in worker  # --scale needs unnamed containers
    assert worker["environment"]["LOCUST_ROLE"] == "worker"
    assert worker["environment"]["LOCUST_MASTER_NODE_HOST"] == "locust-master"
    assert stack["services"]["locust-master"]["environment"]["JOTC_TARGET"] == "http://api:4000"


def test_core_variant_has_only_the_core() -> None:
    core = compose_config("-f", "deploy/compose/core.yml")
    assert set(core["services"]) == {"postgres", "redis", "migrate", "api"}


def test_env_example_settings_reach_the_services() -> None:
    config = compose_config("--env-file", ".env.example")
    api = config["services"]["api"]["environment"]
    assert api["JOTC_ADMIN_TOKEN"] == "local-admin-token-change-me"
    assert api["DATABASE_URL"] == "postgresql://jotc:jotc-local-only@postgres:5432/jotc"


def test_no_env_file_or_secret_is_committed() -> None:
    tracked = set(committed_files())
    assert ".env" not in tracked
    assert ".env.example" in tracked
