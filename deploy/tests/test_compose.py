"""docker-compose.yml and its fragments, checked offline with `docker compose config`."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT, committed_files, compose, compose_binary, compose_config

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


def host_addresses(config: dict[str, Any]) -> set[str]:
    return {port.get("host_ip", "") for service in config["services"].values() for port in service.get("ports", [])}


def test_published_ports_bind_loopback_by_default(stack: dict[str, Any]) -> None:
    # PostgreSQL with a well-known password and Redis without one must not face the network.
    assert host_addresses(stack) == {"127.0.0.1"}


def test_publish_address_moves_every_port(tmp_path: Path) -> None:
    everywhere = "0.0.0.0"  # noqa: S104 - the opt-in this test checks
    (tmp_path / "bind.env").write_text(f"PUBLISH_ADDRESS={everywhere}\n")
    assert host_addresses(compose_config("--env-file", str(tmp_path / "bind.env"))) == {everywhere}


def test_core_only_command_honours_the_root_env_file(tmp_path: Path) -> None:
    """`docker compose -f deploy/compose/core.yml up` reads the .env beside core.yml: a link to the root one."""
    link = ROOT / "deploy/compose/.env"
    assert link.is_symlink()
    assert os.readlink(link) == "../../.env"
    shutil.copytree(ROOT / "deploy/compose", tmp_path / "deploy/compose", symlinks=True)
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    (tmp_path / ".env").write_text("API_PORT=14000\nJOTC_ADMIN_TOKEN=from-the-root-env\n")  # pragma: allowlist secret
    result = subprocess.run(
        [compose_binary(), "-f", "deploy/compose/core.yml", "config", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    api = json.loads(result.stdout)["services"]["api"]
    assert api["environment"]["JOTC_ADMIN_TOKEN"] == "from-the-root-env"
    assert published(api) == {14000: 4000}


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
        "pgbouncer": "service_healthy",
    }
    assert stack["services"]["api"]["depends_on"]["pgbouncer"]["required"] is False  # only with its profile
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
    assert stack["services"]["locust-master"]["build"]["context"] == str(ROOT / "services/loadtest")


def test_each_image_is_built_by_one_service_and_never_pulled() -> None:
    """No registry has the images built here: Compose must not try to pull them (it warns, then
    builds), and one image built by two services is built twice, the first left untagged."""
    services = compose_config("--profile", "*")["services"]
    built = {service["image"]: name for name, service in services.items() if "build" in service}
    assert len(built) == len([service for service in services.values() if "build" in service]), built
    for name, service in services.items():
        if service.get("image") in built:
            assert service.get("pull_policy") == "never", name
    runs_built = {
        name for name, service in services.items() if service.get("image") in built and "build" not in service
    }
    assert runs_built == {"locust-worker", "retention"}


def test_named_volumes(stack: dict[str, Any]) -> None:
    assert {"postgres-data", "redisinsight-data"} <= set(stack["volumes"])
    postgres_mounts = stack["services"]["postgres"]["volumes"]
    assert any(m["type"] == "volume" and m["source"] == "postgres-data" for m in postgres_mounts)


def test_api_runs_read_only_with_a_tmpfs(stack: dict[str, Any]) -> None:
    api = stack["services"]["api"]
    assert api["read_only"] is True
    assert "/tmp" in api["tmpfs"]


def seconds(duration: str) -> int:
    """A Compose duration as `config` renders it (30s, 1m30s) in whole seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(amount) * units[unit] for amount, unit in re.findall(r"(\d+)([hms])", duration))


@pytest.mark.parametrize("variant", VARIANTS)
def test_api_stop_grace_period_covers_the_drain_and_the_shutdown(variant: str) -> None:
    """SIGKILL must not come before the drain, the in-flight requests and Granian's 2 s margin."""
    api = compose_config(*VARIANTS[variant])["services"]["api"]
    env = api["environment"]
    needed = int(env["JOTC_DRAIN_SECONDS"]) + int(env["JOTC_SHUTDOWN_TIMEOUT"]) + 2
    assert seconds(api["stop_grace_period"]) > needed


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
    assert api["JOTC_ADMIN_TOKEN"] == "local-admin-token-change-me-32-characters-at-least"  # pragma: allowlist secret
    assert api["DATABASE_URL"] == "postgresql://jotc:jotc-local-only@postgres:5432/jotc"


def test_opentelemetry_is_off_by_default_and_reaches_every_jotc_command_when_asked() -> None:
    quiet = compose_config_with({"COMPOSE_PROFILES": "retention"})["services"]
    for service in ("api", "migrate", "retention"):
        environment = quiet[service]["environment"]
        assert not environment["OTEL_TRACES_EXPORTER"], f"{service}: traces on without being asked"
        assert not environment["OTEL_EXPORTER_OTLP_ENDPOINT"], f"{service}: traces on without being asked"
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    asked = compose_config_with({"COMPOSE_PROFILES": "retention", **endpoint})["services"]
    for service in ("api", "migrate", "retention"):
        assert asked[service]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318", service
    # Every other variable of x-otel passes through when set, and only then (null: left out of the
    # container, where an empty value would not read as unset).
    declared = yaml.safe_load((ROOT / "deploy/compose/core.yml").read_text())["x-otel"]
    passed = [name for name, value in declared.items() if value is None]
    assert {"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SEMCONV_STABILITY_OPT_IN"} <= set(passed)
    assert [quiet["api"]["environment"][name] for name in passed] == [None] * len(passed)
    set_here = {name: f"value-of-{name.lower()}" for name in passed}
    given = compose_config_with({"COMPOSE_PROFILES": "retention", **set_here})["services"]
    for service in ("api", "migrate", "retention"):
        environment = given[service]["environment"]
        assert {name: environment.get(name) for name in passed} == set_here, service


def test_observability_md_lists_every_variable_compose_passes() -> None:
    declared = yaml.safe_load((ROOT / "deploy/compose/core.yml").read_text())["x-otel"]
    documented = (ROOT / "docs/observability.md").read_text()
    assert [name for name in declared if name not in documented] == []


def test_no_env_file_or_secret_is_committed() -> None:
    tracked = set(committed_files())
    assert ".env" not in tracked
    assert ".env.example" in tracked


def test_retention_is_a_one_shot_under_its_own_profile() -> None:
    assert "retention" not in compose_config()["services"]  # `up` never starts it
    config = compose_config("--profile", "retention")
    retention = config["services"]["retention"]
    # The API image's ENTRYPOINT is jotc-api: a `command` would only become its arguments.
    assert retention["entrypoint"] == ["jotc-retention"]
    assert not retention.get("command")
    assert retention["image"] == config["services"]["api"]["image"]
    assert retention["restart"] == "no"
    assert "JOTC_RETENTION_DAYS" in retention["environment"]
    assert retention["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_adminer_opens_on_the_stacks_postgresql() -> None:
    adminer = compose_config("--env-file", ".env.example")["services"]["adminer"]["environment"]
    assert adminer == {
        "ADMINER_DEFAULT_DRIVER": "pgsql",
        "ADMINER_DEFAULT_SERVER": "postgres",
        "ADMINER_DEFAULT_USER": "jotc",
        "ADMINER_DEFAULT_DB": "jotc",
    }


def test_the_pooler_profile_puts_pgbouncer_before_postgresql_for_the_api_only() -> None:
    """`up` leaves PgBouncer out; with the profile and the two variables the API connects through
    it in transaction mode, while the migration keeps PostgreSQL's own address."""
    assert "pgbouncer" not in compose_config()["services"]
    plain = compose_config("--env-file", ".env.example")["services"]
    assert plain["api"]["environment"]["JOTC_DB_POOLER"] == "none"
    pooled = compose_config_with(
        {"COMPOSE_PROFILES": "pooler", "JOTC_DB_ADDRESS": "pgbouncer:6432", "JOTC_DB_POOLER": "transaction"}
    )["services"]
    pgbouncer = pooled["pgbouncer"]
    assert pgbouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert pgbouncer["read_only"] is True
    assert pgbouncer["user"] == "10001:10001"
    assert "exec pgbouncer /etc/pgbouncer/pgbouncer.ini" in pgbouncer["command"][-1]
    (config,) = pgbouncer["volumes"]
    assert config["source"] == str(ROOT / "deploy/compose/pgbouncer/pgbouncer.ini")
    assert config["read_only"] is True
    api = pooled["api"]["environment"]
    assert api["DATABASE_URL"] == "postgresql://jotc:jotc-local-only@pgbouncer:6432/jotc"
    assert api["JOTC_DB_POOLER"] == "transaction"
    assert pooled["migrate"]["environment"]["DATABASE_URL"] == "postgresql://jotc:jotc-local-only@postgres:5432/jotc"


def test_the_compose_pgbouncer_is_set_as_the_charts() -> None:
    """Transaction pooling and the settings the API needs, in the profile's static file as in the
    chart's rendered pgbouncer.ini (deploy/tests/test_chart_data_services.py)."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "deploy/compose/pgbouncer/pgbouncer.ini")
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert settings["ignore_startup_parameters"] == "extra_float_digits"
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["auth_file"] == "/tmp/userlist.txt"  # the tmpfs: the root is read-only
    assert settings["listen_port"] == "6432"
    assert dict(ini["databases"]) == {"*": "host=postgres port=5432"}


def compose_config_with(variables: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [compose_binary(), "--env-file", ".env.example", "config", "--format", "json"],
        cwd=ROOT,
        # The runner's own OTEL_* must not reach the configuration: what a test sets is what it reads.
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **variables},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config
