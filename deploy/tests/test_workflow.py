"""The CI workflow for the project's public home (.github/workflows/ci.yml): linted with actionlint
and zizmor, and checked to do what its header says. It cannot run here (no GitHub runner, no kind,
no registry); what it runs on Kubernetes is rendered and validated here for the same versions."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import CHART, find, invalid_on, one, render
from common import CommandError, apt_install, can_install
from support import ROOT, committed_files, venv_tool

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
CI = ROOT / ".github/workflows/ci.yml"
KIND_VALUES = ROOT / ".github/kind-values.yaml"


def workflow() -> dict[Any, Any]:
    parsed: dict[Any, Any] = yaml.safe_load(CI.read_text())
    return parsed


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def scripts(job: str) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def tool(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A linter locked in deploy/uv.lock, run from this environment."""
    return subprocess.run(
        [venv_tool(command), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def shellcheck_on_path() -> None:
    """actionlint checks each `run:` script with shellcheck when it finds one: install Debian's as
    root, as the container stage installs its packages; elsewhere actionlint runs without it."""
    if shutil.which("shellcheck") or not can_install():
        return
    with contextlib.suppress(CommandError):
        apt_install("shellcheck")


def test_actionlint_passes() -> None:
    shellcheck_on_path()
    result = tool("actionlint", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    result = tool("zizmor", "--offline", "--no-progress", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit() -> None:
    for job in workflow()["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def test_scripts_test_on_every_push_and_pull_request() -> None:
    triggers = workflow()[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request"}
    assert triggers["push"]["branches"] == ["**"]
    assert "scripts/test" in scripts("test").split()
    assert workflow()["permissions"] == {}


def test_images_for_two_architectures_only_on_tags_and_after_every_check() -> None:
    jobs = workflow()["jobs"]
    assert workflow()[True]["push"]["tags"] == ["v*"]
    assert jobs["images"]["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(jobs["images"]["needs"]) == {"test", "kind", "production", "audit"}
    assert {row["arch"] for row in jobs["images"]["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    build = scripts("images")
    assert "--push" in build
    for service in ("api", "db-migrations", "loadtest"):
        assert (ROOT / "services" / service / "Dockerfile").exists()
    assert "for service in api db-migrations loadtest" in build
    assert "imagetools create" in scripts("manifests")
    assert jobs["images"]["permissions"]["packages"] == "write"


def kind_minors(job: str = "kind") -> list[int]:
    rows = workflow()["jobs"][job]["strategy"]["matrix"]["include"]
    minors = []
    for row in rows:
        version = re.search(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}$", row["node"])
        assert version, row["node"]
        assert row["kubernetes"] == f"1.{version.group(1)}"
        minors.append(int(version.group(1)))
    return minors


def test_kind_covers_the_oldest_claimed_minor_and_1_35() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    oldest = int(re.fullmatch(r">=1\.(\d+)\.0-0", chart["kubeVersion"]).group(1))  # type: ignore[union-attr]
    assert set(kind_minors()) == {oldest, 35}
    assert kind_minors("production") == kind_minors()
    assert workflow()["jobs"]["production"]["strategy"] == workflow()["jobs"]["kind"]["strategy"]


def test_kind_installs_waits_tests_and_runs_a_headless_swarm_through_the_ingress() -> None:
    run = scripts("kind")
    assert re.search(r"helm install jotc .*--wait", run)
    assert "helm test jotc" in run
    assert re.search(r"helm upgrade jotc .*--set locust\.enabled=true --wait --wait-for-jobs", run)
    values = yaml.safe_load(KIND_VALUES.read_text())
    assert values["locust"]["mode"] == "headless"
    assert values["locust"]["target"] == f"http://{values['api']['ingress']['host']}"
    # the Secrets the values name are the ones the job creates
    assert f"create secret generic {values['adminToken']['existingSecret']} " in run
    evaluation = yaml.safe_load((CHART / "ci/evaluation-values.yaml").read_text())["evaluation"]["existingSecret"]
    assert f"create secret generic {evaluation} " in run


def kind_render() -> list[dict[str, Any]]:
    return render("evaluation-values", "-f", str(KIND_VALUES), "--set", "locust.enabled=true")


def test_what_kind_installs_is_valid_on_its_kubernetes_versions() -> None:
    docs = kind_render()
    errors = [error for minor in kind_minors() for error in invalid_on(minor, docs)]
    assert not errors, "\n".join(errors)
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert {d["kind"] for d in docs if "locust" in d["metadata"]["name"]} >= {"Job", "Service"}


# --- the production path: job production, chart-testing, the upgrade and rollback under the prober ---

GITHUB = ROOT / ".github"
EXTERNAL_DATA = CHART / "ci/external-data-values.yaml"


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def production_env() -> dict[str, str]:
    env: dict[str, str] = workflow()["jobs"]["production"]["env"]
    return env


def test_ct_installs_every_ci_file_in_a_namespace_the_job_prepares() -> None:
    run = scripts("production")
    config = yaml_file(GITHUB / "ct.yaml")
    assert config["charts"] == ["deploy/helm/jotc"]
    assert "ct lint --config .github/ct.yaml" in run
    assert "ct install --config .github/ct.yaml" in run
    assert "--set=imageTag=ci" in config["helm-extra-set-args"], "ct must install the images the job builds"
    assert "for namespace in jotc " + config["namespace"] + "; do" in run
    # ci/evaluation-values.yaml's Secret and ci/locust-ui-values.yaml's, in ct's namespace
    evaluation = yaml_file(CHART / "ci/evaluation-values.yaml")["evaluation"]["existingSecret"]
    locust_web = yaml_file(CHART / "ci/locust-ui-values.yaml")["locust"]["web"]["existingSecret"]
    for secret in (evaluation, locust_web):
        assert f"create secret generic {secret} --namespace {config['namespace']}" in run


def test_the_job_creates_every_secret_the_production_values_name_and_the_baseline_first() -> None:
    run = scripts("production")
    values = yaml_file(EXTERNAL_DATA)
    for secret in (values["database"], values["redis"], values["adminToken"]):
        assert f'create secret generic {secret["existingSecret"]} --namespace "$namespace"' in run
    baseline = yaml_file(GITHUB / "kind-default-deny.yaml")
    assert baseline["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert 'apply --namespace "$namespace" -f .github/kind-default-deny.yaml' in run
    assert run.index("kind-default-deny.yaml") < run.index("ct install --config") < run.index("helm install jotc")


# Files of deploy/helm/jotc/ci/ install on the job's cluster: no image registry, pull secret or
# placeholder host, and no object of a CRD it lacks (the Prometheus Operator's).
NOT_ON_KIND = re.compile(r"example\.(com|internal|org)|registry\.|imagePullSecrets: \[\{")


@pytest.mark.parametrize("path", sorted((CHART / "ci").glob("*.yaml")), ids=lambda path: path.name)
def test_every_ci_file_can_be_installed_on_the_jobs_cluster(path: Path) -> None:
    assert path.name.endswith("-values.yaml"), "ct installs ci/*-values.yaml only"
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())  # comments aside
    assert not NOT_ON_KIND.search(text), f"{path.name} needs what kind lacks: move it to examples/"
    docs = render(path.stem, "--set", "imageTag=ci")
    assert not [d["kind"] for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    errors = [error for minor in kind_minors("production") for error in invalid_on(minor, docs)]
    assert not errors, "\n".join(errors)


def test_the_examples_are_what_kind_cannot_install() -> None:
    examples = sorted((CHART / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        assert NOT_ON_KIND.search(path.read_text()) or "CloudNativePG" in path.read_text(), path.name


def test_the_production_values_are_production_like() -> None:
    docs = render("external-data-values", "--set", "imageTag=ci")
    hook = one(docs, "Job", "migrate")
    assert "pre-upgrade" in hook["metadata"]["annotations"]["helm.sh/hook"]
    assert not find(docs, "StatefulSet"), "the data services are outside the release"
    assert not [d for d in docs if d["kind"] == "Secret" and "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    deployment = one(docs, "Deployment", "api")
    assert len(deployment["spec"]["template"]["spec"]["containers"]) == 2, "the API and its metrics sidecar"
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    assert one(docs, "PodDisruptionBudget")
    api_policy = one(docs, "NetworkPolicy", "api")
    sources = [peer for rule in api_policy["spec"]["ingress"] for peer in rule.get("from", [])]
    ingress_namespace = {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    assert {"namespaceSelector": ingress_namespace} in sources
    assert "--namespace ingress-nginx" in scripts("production")


def test_the_data_peers_select_the_data_services_the_job_runs() -> None:
    peers = yaml_file(EXTERNAL_DATA)["api"]["networkPolicy"]["dataPeers"]
    manifests = list(yaml.safe_load_all((GITHUB / "kind-data.yaml").read_text()))
    pods = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Deployment"}
    for service, name in (("database", "postgres"), ("redis", "redis")):
        (peer,) = peers[service]
        deployment = pods[name]
        namespace = deployment["metadata"]["namespace"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        assert (
            peer["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert re.fullmatch(r"[\w.-]+:[\w.-]+@sha256:[0-9a-f]{64}", container["image"]), container["image"]
        assert f"{name}.{namespace}.svc" in scripts("production")
    services = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Service"}
    assert set(services) == set(pods)
    for name, service in services.items():
        assert service["spec"]["selector"] == pods[name]["spec"]["selector"]["matchLabels"]


def test_the_trusted_proxies_are_the_clusters_pod_subnet() -> None:
    cluster = yaml_file(GITHUB / "kind-cluster.yaml")
    settings = yaml_file(EXTERNAL_DATA)["api"]["settings"]
    assert settings["JOTC_TRUSTED_PROXIES"] == cluster["networking"]["podSubnet"]
    (mapping,) = cluster["nodes"][0]["extraPortMappings"]
    assert f"controller.service.nodePorts.http={mapping['containerPort']}" in scripts("production")
    assert f"http://127.0.0.1:{mapping['hostPort']}" in scripts("production")
    assert mapping["listenAddress"] == "127.0.0.1"


def test_the_upgrade_adds_the_expand_revision_and_the_rollback_returns_under_the_prober() -> None:
    run = scripts("production")
    dockerfile = (GITHUB / "expand-migration.Dockerfile").read_text()
    copied = re.search(r"^COPY (\S+) (\S+)/$", dockerfile, re.MULTILINE)
    extra = re.search(r"^ENV JOTC_MIGRATE_EXTRA_VERSIONS=(\S+)$", dockerfile, re.MULTILINE)
    assert copied, dockerfile
    assert extra, dockerfile
    assert copied[2] == extra[1], "the revision is copied where JOTC_MIGRATE_EXTRA_VERSIONS points"
    context = "services/db-migrations/tests/revisions/expand"
    assert f"--tag jotc-db-migrations:expand \\\n  {context}" in run
    revision = re.search(r'^revision: str = "(\w+)"$', (ROOT / context / copied[1]).read_text(), re.MULTILINE)
    assert revision
    assert revision[1] == "t_expand"
    assert 'if [ "$revision" != t_expand ]' in run
    prober = run.index("scripts/prober http://127.0.0.1:8080")
    upgrade = run.index('helm upgrade jotc "$CHART" $VALUES --set imageTag=expand')
    rollback = run.index("helm rollback jotc 1 --namespace jotc --wait")
    stopped = run.index('kill -TERM "$prober"')
    assert prober < upgrade < rollback < stopped
    assert 'wait "$prober" || status=$?' in run
    assert '--host "$INGRESS_HOST"' in run
    assert production_env()["INGRESS_HOST"] == yaml_file(EXTERNAL_DATA)["api"]["ingress"]["host"]
    for image in ("jotc-api:expand", "jotc-db-migrations:expand"):
        assert image in run


def test_after_the_upgrade_and_the_rollback_the_running_pods_report_the_revision_they_serve() -> None:
    """The release guard reads the serving revision from jotc_schema_readers, which the ready API
    pods refresh: after each of the upgrade and the rollback, rows written since it finished name
    the head the (same) API image serves and nothing else, and the rollback leaves the schema at
    t_expand. No step runs a hook or jotc-migrate to record it."""
    run = scripts("production")
    assert "record-serving" not in run
    assert "head=$(docker run --rm jotc-db-migrations:ci head)" in run
    assert "FROM jotc_schema_readers WHERE seen_at > '$1'" in run
    assert 'if [ "$reported" = "$2" ]; then' in run
    upgrade = run.index('helm upgrade jotc "$CHART" $VALUES --set imageTag=expand')
    upgraded = run.index('reported_since "$upgraded_at" "$head" "after the upgrade"')
    rollback = run.index("helm rollback jotc 1 --namespace jotc --wait")
    settled = run.index("kubectl rollout status deployment/jotc-api --namespace jotc", rollback)
    since = run.index("rolled_back_at=$(query 'SELECT now()')")
    rolled_back = run.index('reported_since "$rolled_back_at" "$head" "after the rollback"')
    schema = run.index("::error::after the rollback the database is at revision '$revision', not t_expand")
    assert upgrade < upgraded < rollback < settled < since < rolled_back < schema


def test_no_expression_is_expanded_inside_a_script() -> None:
    for name, job in workflow()["jobs"].items():
        for step in job.get("steps", []):
            assert "${{" not in step.get("run", ""), f"{name}: {step.get('name')}: pass it through env"


def test_the_audit_covers_every_lock_file() -> None:
    run = scripts("audit")
    assert "git ls-files '*uv.lock'" in run
    assert "git ls-files '*package-lock.json'" in run
    # pip-audit is pinned in deploy's dev group, locked in deploy/uv.lock, and run from that environment.
    dev = tomllib.loads((ROOT / "deploy/pyproject.toml").read_text())["dependency-groups"]["dev"]
    pins = [pin for pin in dev if re.fullmatch(r"pip-audit==\S+", pin)]
    assert len(pins) == 1, dev
    lock = tomllib.loads((ROOT / "deploy/uv.lock").read_text())["package"]
    assert [package["version"] for package in lock if package["name"] == "pip-audit"] == [pins[0].split("==")[1]]
    assert "sync --project deploy --locked" in run
    assert "pip_audit=deploy/.venv/bin/pip-audit" in run
    assert not re.search(r"\btool run\b", run), "pip-audit is run from deploy's locked environment"
    assert "scripts/tools/bootstrap-requirements.txt" in run
    locks = [name for name in committed_files() if Path(name).name in {"uv.lock", "package-lock.json"}]
    assert len(locks) >= 5, locks  # three services, deploy/, scripts/tools/
    assert not [name for name in committed_files() if re.search(r"(poetry|Pipfile|yarn|pnpm-lock)\.lock$", name)]


@pytest.mark.parametrize("path", ["README.md", "deploy/helm/jotc/README.md"])
def test_the_readmes_say_the_workflow_cannot_run_here(path: str) -> None:
    text = (ROOT / path).read_text()
    assert ".github/workflows/ci.yml" in text
    assert "cannot run here" in text
