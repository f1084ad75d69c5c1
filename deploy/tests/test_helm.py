"""The Helm chart, offline: lint, render every ci/ values file, validate every manifest against the
Kubernetes schemas, and assert what the chart promises on the rendered objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

CHART = ROOT / "deploy/helm/jotc"
VALUES = {"default": None, **{path.stem: path for path in sorted((CHART / "ci").glob("*.yaml"))}}
KUBERNETES = "1.35.0"


def helm() -> str:
    found = shutil.which("helm") or str(ROOT / ".tools/helm/helm")
    if not Path(found).exists():
        pytest.exit("helm not found: scripts/test installs it (.tools/helm), or put helm on PATH", returncode=2)
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False, timeout=120)


def values_args(name: str) -> list[str]:
    path = VALUES[name]
    return ["-f", str(path)] if path else []


def render(name: str, *extra: str) -> list[dict[str, Any]]:
    result = run_helm("template", "rel", str(CHART), "--namespace", "jotc", *values_args(name), *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = find(docs, kind, name_part)
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


@pytest.mark.parametrize("name", VALUES)
def test_lint_strict(name: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values_args(name))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUES)
def test_every_manifest_is_valid_kubernetes(name: str) -> None:
    for doc in render(name):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD of the Prometheus Operator: not in the Kubernetes schemas
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def api_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("name", VALUES)
def test_api_meets_the_restricted_pod_security_profile(name: str) -> None:
    docs = render(name)
    pods = [api_pod(docs)] + [d["spec"]["template"]["spec"] for d in find(docs, "Job")]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert security["seccompProfile"]["type"] == "RuntimeDefault"
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]


def test_api_probes_tmp_and_graceful_stop() -> None:
    docs = render("default")
    pod = api_pod(docs)
    api = pod["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "tmp", "mountPath": "/tmp"} in api["volumeMounts"]
    sleep = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    config = one(docs, "ConfigMap", "-api")["data"]
    assert pod["terminationGracePeriodSeconds"] > sleep + int(config["JOTC_SHUTDOWN_TIMEOUT"]) + 2
    assert pod["topologySpreadConstraints"]
    deployment = one(docs, "Deployment", "-api")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_grace_period_shorter_than_the_drain_is_refused() -> None:
    result = run_helm("template", "rel", str(CHART), "--set", "api.terminationGracePeriodSeconds=20")
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr


@pytest.mark.parametrize(("cpu", "workers"), [("1", "1"), ("2", "2"), ("1500m", "2"), ("500m", "1"), ("2.5", "3")])
def test_granian_workers_follow_the_cpu_limit(cpu: str, workers: str) -> None:
    docs = render("default", "--set-string", f"api.resources.limits.cpu={cpu}")
    assert one(docs, "ConfigMap", "-api")["data"]["JOTC_WORKERS"] == workers


def test_checksums_roll_the_pods_when_config_changes() -> None:
    def checksum(*extra: str) -> str:
        annotations = one(render("default", *extra), "Deployment", "-api")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return str(annotations["checksum/config"])

    assert checksum() != checksum("--set", "api.settings.LOG_LEVEL=DEBUG")
    annotations = one(render("default"), "Deployment", "-api")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations


def test_migration_hook_in_production() -> None:
    docs = render("production-values")
    job = one(docs, "Job", "-migrate-")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = job["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    init = api_pod(docs)["initContainers"][0]
    assert init["args"][:2] == ["check", "--wait"]


def test_evaluation_migration_is_a_plain_job_and_data_services_run() -> None:
    docs = render("evaluation-values")
    assert "annotations" not in one(docs, "Job", "-migrate-")["metadata"]
    postgres = one(docs, "StatefulSet", "-postgresql")
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    redis = one(docs, "StatefulSet", "-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    env = {e["name"]: e for e in api_pod(docs)["containers"][0]["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"


def test_no_plaintext_secret_in_the_default_values() -> None:
    docs = render("default")
    secret = one(docs, "Secret", "-secrets")
    assert set(secret["data"]) == {"token", "admin-token"}  # generated, kept across upgrades by lookup
    env = {e["name"]: e for e in api_pod(docs)["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "jotc-database", "key": "url"}
    assert "REDIS_URL" not in env


def test_hpa_and_replicas() -> None:
    production = render("production-values")
    hpa = one(production, "HorizontalPodAutoscaler", "-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" not in one(production, "Deployment", "-api")["spec"]
    default = render("default")
    assert not find(default, "HorizontalPodAutoscaler")
    assert one(default, "Deployment", "-api")["spec"]["replicas"] == 2


def test_pdb_only_when_more_than_one_replica_is_possible() -> None:
    assert (
        one(render("default"), "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        == "api"
    )
    assert not find(render("evaluation-values"), "PodDisruptionBudget")


def test_network_policy_and_service_monitor() -> None:
    docs = render("production-values")
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 4000, "protocol": "TCP"}]
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert {53, 5432, 6379} <= set(egress_ports)
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "-api")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "jotc-example-com-tls"


def test_locust_headless_job_and_workers() -> None:
    docs = render("loadtest-values")
    job = one(docs, "Job", "locust-master")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LOCUST_ROLE"] == "headless-master"
    assert env["JOTC_TARGET"] == "http://jotc.example.com"
    assert env["JOTC_SLO_P95_MS"] == "200"
    assert env["LOCUST_EXPECT_WORKERS"] == "4"
    workers = one(docs, "Deployment", "locust-worker")
    worker_env = {e["name"]: e.get("value") for e in workers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["LOCUST_MASTER_NODE_HOST"] == "rel-jotc-locust-master"
    assert "replicas" not in workers["spec"]
    one(docs, "HorizontalPodAutoscaler", "locust-worker")
    assert {p["port"] for p in one(docs, "Service", "locust-master")["spec"]["ports"]} == {8089, 5557}


def test_locust_ui_targets_the_api_service_and_mounts_a_locustfile() -> None:
    docs = render("locust-ui-values")
    master = one(docs, "Deployment", "locust-master")
    container = master["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JOTC_TARGET"] == "http://rel-jotc-api:4000"
    assert env["LOCUST_LOCUSTFILE"] == "/locustfile/locustfile.py"
    one(docs, "ConfigMap", "locustfile")


def test_helm_test_hook_posts_to_jumps() -> None:
    test_pod = one(render("default"), "Pod", "test-jumps")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/jumps" in test_pod["spec"]["containers"][0]["command"][-1]


@pytest.mark.parametrize(
    "bad",
    [
        "api.replicaCount=many",
        "unknownTopLevel=1",
        "locust.mode=swarm",
        "api.service.port=-1",
        "database.url=mysql://x",
        "api.settings.JOTC_ADMIN_TOKEN=plain",
    ],
)
def test_wrong_values_are_rejected_by_the_schema(bad: str) -> None:
    result = run_helm("template", "rel", str(CHART), "--set", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower() or "values don't meet" in result.stderr.lower(), result.stderr
