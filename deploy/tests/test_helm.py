"""The Helm chart, offline: lint, render every ci/ and examples/ values file, validate every manifest
against the Kubernetes schemas, and assert what the chart promises on the rendered objects."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart import CHART, VALUES, find, invalid_on, one, render, run_helm, values_args

ADMIN_TOKEN = "0123456789abcdef0123456789abcdef"  # pragma: allowlist secret

# The oldest Kubernetes minor on which every field the chart uses exists and is on by default:
# lifecycle.preStop.sleep (PodLifecycleSleepAction) is alpha and off in 1.29, beta and on in 1.30;
# matchLabelKeys in topologySpreadConstraints and the PDB's unhealthyPodEvictionPolicy are on from
# 1.27, Job podFailurePolicy from 1.26. Chart.yaml's kubeVersion states the same lower bound.
OLDEST_MINOR = 30
FIELD_ON_BY_DEFAULT_SINCE = {
    "lifecycle.preStop.sleep": 30,
    "topologySpreadConstraints.matchLabelKeys": 27,
    "podDisruptionBudget.unhealthyPodEvictionPolicy": 27,
    "job.podFailurePolicy": 26,
}
# Every minor from the oldest to the newest whose schemas kubernetes-validate ships.
KUBERNETES_MINORS = [
    minor for minor in range(OLDEST_MINOR, 100) if f"1.{minor}.0" in kubernetes_validate.utils.all_versions()
]


@pytest.mark.parametrize("name", VALUES)
def test_lint_strict(name: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values_args(name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kube_version_states_the_oldest_minor_where_every_field_is_on() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">=1.{OLDEST_MINOR}.0-0"
    assert max(FIELD_ON_BY_DEFAULT_SINCE.values()) == OLDEST_MINOR
    assert KUBERNETES_MINORS[0] == OLDEST_MINOR
    assert 35 in KUBERNETES_MINORS, "kubernetes-validate ships no 1.35 schemas: update it in deploy/"


def test_helm_refuses_a_cluster_older_than_kube_version() -> None:
    older = run_helm("template", "rel", str(CHART), "--kube-version", f"1.{OLDEST_MINOR - 1}.9")
    assert older.returncode != 0
    assert "kubeVersion" in older.stderr or "incompatible" in older.stderr, older.stderr
    oldest = run_helm("template", "rel", str(CHART), "--kube-version", f"1.{OLDEST_MINOR}.0")
    assert oldest.returncode == 0, oldest.stderr


# The ci/ and examples/ files and the switches they leave off: the dashboard, alerts and a UI swarm
# with workers autoscaled are in production-values / locust-ui-values, headless Locust in
# loadtest-values.
MATRIX = {
    **{name: () for name in VALUES},
    "everything-on": (
        "--set",
        "locust.enabled=true,locust.web.existingSecret=jotc-locust-web,api.ingress.enabled=true,api.metrics.port=9464",
        "--set",
        "api.serviceMonitor.enabled=true",
        "--set",
        "api.grafanaDashboard.enabled=true,api.prometheusRule.enabled=true,locust.workers.autoscaling.enabled=true",
        "--set",
        f"api.autoscaling.enabled=true,adminToken.value={ADMIN_TOKEN}",
    ),
    # The chart's PgBouncer before the evaluation PostgreSQL (the container stage's release).
    "evaluation-pooler": ("-f", str(VALUES["evaluation-values"]), "--set", "database.pooler.type=pgbouncer"),
}


@pytest.mark.parametrize("case", MATRIX)
def test_every_manifest_is_valid_on_every_supported_kubernetes(case: str) -> None:
    name = case if case in VALUES else "default"
    docs = render(name, *MATRIX[case])
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = [
            error for found in pool.map(lambda minor: invalid_on(minor, docs), KUBERNETES_MINORS) for error in found
        ]
    assert not errors, "\n".join(errors)


def test_the_schemas_would_catch_a_field_a_version_lacks() -> None:
    """The matrix is not vacuous: preStop.sleep is unknown to the 1.28 schema, so strict validation
    there rejects the API Deployment."""
    errors = invalid_on(28, [one(render("default"), "Deployment", "-api")])
    assert errors, "the 1.28 schema accepted preStop.sleep"
    assert "sleep" in errors[0]


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
    drain = int(config["JOTC_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain + int(config["JOTC_SHUTDOWN_TIMEOUT"]) + 2
    ready = api["readinessProbe"]
    assert drain >= ready["periodSeconds"] * ready["failureThreshold"]  # /readyz fails long enough to be seen
    assert pod["topologySpreadConstraints"]
    deployment = one(docs, "Deployment", "-api")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_grace_period_shorter_than_the_drain_is_refused() -> None:
    result = run_helm("template", "rel", str(CHART), "--set", "api.terminationGracePeriodSeconds=20")
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr
    longer_drain = run_helm("template", "rel", str(CHART), "--set", "api.drainSeconds=20")
    assert longer_drain.returncode != 0
    assert "drainSeconds" in longer_drain.stderr


def test_a_drain_too_short_for_the_readiness_probe_to_notice_is_refused() -> None:
    result = run_helm("template", "rel", str(CHART), "--set", "api.drainSeconds=5")
    assert result.returncode != 0
    assert "api.drainSeconds (5) must be at least" in result.stderr


@pytest.mark.parametrize(
    ("cpu", "workers"), [("1", "1"), ("2", "2"), ("1500m", "1"), ("500m", "1"), ("2.5", "2"), ("3999m", "3")]
)
def test_granian_workers_follow_the_cpu_limit_rounded_down(cpu: str, workers: str) -> None:
    docs = render("default", "--set-string", f"api.resources.limits.cpu={cpu},api.resources.limits.memory=1Gi")
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
    # The URLs are composed by Kubernetes from the passwords in the evaluation Secret.
    assert env["JOTC_EVALUATION_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "jotc-evaluation",
        "key": "redis-password",
    }
    assert env["REDIS_URL"]["value"] == "redis://:$(JOTC_EVALUATION_REDIS_PASSWORD)@rel-jotc-redis:6379/0"
    names = [e["name"] for e in api_pod(docs)["containers"][0]["env"]]
    assert names.index("JOTC_EVALUATION_POSTGRES_PASSWORD") < names.index("DATABASE_URL")


def test_no_plaintext_secret_in_the_default_values() -> None:
    docs = render("default")
    assert not find(docs, "Secret"), "nothing to store: every secret of the defaults is the operator's"
    env = {e["name"]: e for e in api_pod(docs)["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "jotc-database", "key": "url"}
    assert "REDIS_URL" not in env
    assert "JOTC_ADMIN_TOKEN" not in env  # the admin API is off until a token is given


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
    policy = one(docs, "NetworkPolicy", "-api")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 4000, "protocol": "TCP"}]
    assert monitor_labels(docs).items() >= {"release": "kube-prometheus-stack"}.items()
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
    assert env["LOCUST_EXPECT_WORKERS_MAX_WAIT"] == "300"
    workers = one(docs, "Job", "locust-worker")
    worker_env = {e["name"]: e.get("value") for e in workers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["LOCUST_MASTER_NODE_HOST"] == "rel-jotc-locust-master"
    assert worker_env["LOCUST_ROLE"] == "worker"
    assert {p["port"] for p in one(docs, "Service", "locust-master")["spec"]["ports"]} == {8089, 5557}


def test_a_headless_run_leaves_nothing_restarting() -> None:
    """Every Locust pod of a headless run belongs to a Job that ends: workers quit when the master
    tells them the run is over, exit 0, and are not restarted; both Jobs have a deadline."""
    docs = render("loadtest-values")
    assert not [
        d for d in docs if "locust" in d["metadata"]["name"] and d["kind"] in {"Deployment", "HorizontalPodAutoscaler"}
    ]
    master, workers = one(docs, "Job", "locust-master"), one(docs, "Job", "locust-worker")
    assert master["metadata"]["name"].endswith("-1")
    assert workers["metadata"]["name"].endswith("-1")
    assert workers["spec"]["completions"] == workers["spec"]["parallelism"] == 4
    for job in (master, workers):
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # 300 s waiting for workers + 5m run + 120 s to spawn and report
        assert job["spec"]["activeDeadlineSeconds"] == 300 + 300 + 120
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert workers["spec"]["backoffLimit"] <= workers["spec"]["completions"]
    worker_env = {e["name"]: e.get("value") for e in workers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["LOCUST_EXIT_CODE_ON_ERROR"] == "0"  # the verdict is the master's
    # The only long-running pods left are the API's.
    for _, pod in pods(docs):
        if pod.get("restartPolicy", "Always") == "Always":
            assert pod["containers"][0]["name"] in {"api", "postgresql", "redis"}, pod["containers"][0]["name"]


@pytest.mark.parametrize(("run_time", "seconds"), [("90s", 90), ("2m", 120), ("1h", 3600)])
def test_the_headless_deadline_follows_the_run_time(run_time: str, seconds: int) -> None:
    docs = render("loadtest-values", "--set", f"locust.headless.runTime={run_time}")
    assert one(docs, "Job", "locust-master")["spec"]["activeDeadlineSeconds"] == 300 + seconds + 120


def test_headless_workers_cannot_be_autoscaled() -> None:
    message = fails("-f", str(VALUES["loadtest-values"]), "--set", "locust.workers.autoscaling.enabled=true")
    assert "locust.workers.autoscaling is for mode ui" in message


def test_locust_ui_targets_the_api_service_and_mounts_a_locustfile() -> None:
    docs = render("locust-ui-values")
    master = one(docs, "Deployment", "locust-master")
    container = master["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JOTC_TARGET"] == "http://rel-jotc-api:4000"
    assert env["LOCUST_LOCUSTFILE"] == "/locustfile/locustfile.py"
    one(docs, "ConfigMap", "locustfile")


def test_helm_test_hook_posts_to_jumps() -> None:
    """Through the API's Service, expecting the refusal that records nothing (test_chart_rollout.py
    checks the input is one the API refuses)."""
    test_pod = one(render("default"), "Pod", "test-jumps")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert 'api + "/jumps"' in script
    assert "refusal.code == 422" in script
    assert "/problems/unreachable" in script


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


def monitor_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "ServiceMonitor")["metadata"]["labels"]
    return labels


def fails(*args: str) -> str:
    """Render with these arguments; it must fail. Returns helm's message."""
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode != 0, "rendered, but should have been refused"
    return result.stderr


def pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart renders, by object name."""
    found = [(d["metadata"]["name"], d["spec"]) for d in docs if d["kind"] == "Pod"]
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "Job"}:
            found.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return found


def test_evaluation_redis_has_a_password_memory_cap_and_probes() -> None:
    docs = render("evaluation-values")
    redis = one(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--maxmemory") + 1] == "192mb"
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl"
    assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(redis)
    env = {e["name"] for e in redis["env"]}
    assert {"REDIS_PASSWORD", "REDISCLI_AUTH"} <= env


def test_evaluation_passwords_from_a_secret_or_from_values_and_postgres_has_a_startup_probe() -> None:
    docs = render("evaluation-values")
    assert not find(docs, "Secret"), "evaluation-values names its own Secret (jotc-evaluation)"
    postgres = one(docs, "StatefulSet", "-postgresql")["spec"]["template"]["spec"]["containers"][0]
    password = next(e for e in postgres["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "jotc-evaluation", "key": "postgres-password"}
    startup = postgres["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

    given = render("evaluation-values", *EVALUATION_BY_VALUES)
    kept = one(given, "Secret", "-evaluation")
    assert kept["data"] == {"postgres-password": b64("pg-0123456789"), "redis-password": b64("redis-0123456789")}
    assert "annotations" not in kept["metadata"]
    postgres = one(given, "StatefulSet", "-postgresql")["spec"]["template"]["spec"]["containers"][0]
    password = next(e for e in postgres["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == kept["metadata"]["name"]
    message = fails("-f", str(VALUES["evaluation-values"]), "--set", "evaluation.existingSecret=")
    assert "evaluation.postgresql.password=$(openssl rand -hex 24)" in message


# --- Workers and the connection budget ------------------------------------------------------------


def test_without_a_cpu_limit_workers_come_from_the_request_and_notes_warn() -> None:
    docs = render("default", "--set", "api.resources.limits.cpu=null", "--set-string", "api.resources.requests.cpu=2")
    assert one(docs, "ConfigMap", "-api")["data"]["JOTC_WORKERS"] == "2"
    notes = run_helm("install", "--dry-run", "rel", str(CHART), "--set", "api.resources.limits.cpu=null")
    assert notes.returncode == 0, notes.stderr
    assert "WARNING: api.resources.limits.cpu is not set" in notes.stdout


def test_explicit_workers_win() -> None:
    docs = render("default", "--set", "api.workers=3", "--set-string", "api.resources.limits.memory=1Gi")
    assert one(docs, "ConfigMap", "-api")["data"]["JOTC_WORKERS"] == "3"


def test_connections_beyond_the_databases_budget_are_refused() -> None:
    # 8 pods (6 + 1 surge + 1 terminating) x 2 workers x (4 + 1 for /readyz) = 80, + 1 migration:
    # fits 90; a pool of 5 does not.
    ok = ["--set", "api.replicaCount=6,api.rollout.maxSurge=1"]
    ok += ["--set-string", "api.resources.limits.cpu=2,api.resources.limits.memory=1Gi"]
    render("default", *ok)
    message = fails(*ok, "--set-string", "api.settings.JOTC_DB_POOL_SIZE=5")
    assert "database.connectionBudget is 90" in message
    assert "97 PostgreSQL connections" in message


def test_redis_connections_beyond_its_budget_are_refused() -> None:
    ok = ["--set", "api.replicaCount=6,api.rollout.maxSurge=1"]
    ok += ["--set-string", "api.resources.limits.cpu=2,api.resources.limits.memory=1Gi"]
    render("default", *ok)  # 8 pods x 2 workers x 16 = 256 of 1000
    message = fails(*ok, "--set-string", "api.settings.JOTC_REDIS_MAX_CONNECTIONS=64")
    assert "1024 Redis connections" in message
    assert "redis.connectionBudget is 1000" in message


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (["--set", "api.workers=4"], "each of 4 API worker(s) may hold 0Mi"),
        (["--set-string", "api.resources.limits.memory=224Mi"], "may hold 0Mi of requests"),
        (["--set-string", "api.settings.JOTC_REQUEST_MEMORY=4Mi"], "and one request of the largest body need"),
        (["--set-string", "api.settings.JOTC_REQUEST_MEMORY=400Mi"], "needs 560Mi"),
        (["--set", "api.workers=2", "--set-string", "api.settings.JOTC_REQUEST_MEMORY=128Mi"], "needs 288Mi"),
    ],
)
def test_a_worker_without_the_memory_its_budget_needs_is_refused(settings: list[str], words: str) -> None:
    assert words in fails(*settings)


def test_the_memory_budget_reads_every_way_kubernetes_writes_a_quantity() -> None:
    for limit in ("1Gi", "1073741824", "1100M", "1.5Gi"):
        render("default", "--set", "api.workers=4", "--set-string", f"api.resources.limits.memory={limit}")
    for wrong in ("1Zb", "128 Mi", "128mi", "500m"):
        assert "not a memory quantity" in fails("--set-string", f"api.resources.limits.memory={wrong}")


# --- Rate limiting needs trusted proxies ------------------------------------------------------------


def test_rate_limit_without_trusted_proxies_is_refused() -> None:
    assert "JOTC_TRUSTED_PROXIES" in fails("--set-string", "api.settings.JOTC_RATE_LIMIT=600/minute")
    render(
        "default",
        "--set-string",
        "api.settings.JOTC_RATE_LIMIT=600/minute",
        "--set-string",
        "api.settings.JOTC_TRUSTED_PROXIES=10.244.0.0/16",
    )
    assert "JOTC_TRUSTED_PROXIES" not in one(render("default"), "ConfigMap", "-api")["data"]


# --- The API listens where its probes and Service reach it -----------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "localhost", ""])
def test_an_api_listening_on_one_address_only_is_refused(address: str) -> None:
    message = fails("--set-string", f"api.settings.JOTC_HOST={address}")
    assert f'api.settings.JOTC_HOST is "{address}", where neither the probes nor the Service reach the API' in message
    assert "remove it (the API listens on 0.0.0.0), or set :: on an IPv6 cluster" in message


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])  # noqa: S104 - every address of the pod
def test_every_address_of_the_pod_may_be_stated(address: str) -> None:
    data = one(render("default", "--set-string", f"api.settings.JOTC_HOST={address}"), "ConfigMap", "-api")["data"]
    assert data["JOTC_HOST"] == address


# --- Ingress and /metrics --------------------------------------------------------------------------


def ingress_paths(*extra: str) -> set[str]:
    docs = render("default", "--set", "api.ingress.enabled=true", *extra)
    return {p["path"] for p in one(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"]}


def test_ingress_exposes_the_public_api_only_unless_asked() -> None:
    assert ingress_paths() == {"/jumps", "/jotc", "/problems"}
    assert "/admin" in ingress_paths("--set", "api.ingress.exposeAdmin=true")
    assert "/schema" in ingress_paths("--set", "api.ingress.exposeDocs=true")
    assert "/metrics" in ingress_paths("--set", "api.ingress.exposeMetrics=true")
    assert ingress_paths("--set", "api.ingress.exposeAdmin=true") & {"/metrics", "/schema"} == set()


def test_metrics_on_their_own_port() -> None:
    docs = render("production-values")
    pod = api_pod(docs)
    sidecar = next(c for c in pod["containers"] if c["name"] == "metrics")
    assert sidecar["ports"][0]["containerPort"] == 9464
    assert {"name": "tmp", "mountPath": "/tmp"} in sidecar["volumeMounts"]
    service_ports = {p["name"]: p["port"] for p in one(docs, "Service", "-api")["spec"]["ports"]}
    assert service_ports["metrics"] == 9464
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    assert [c["name"] for c in api_pod(render("default"))["containers"]] == ["api"]


# --- One image tag ---------------------------------------------------------------------------------


def images(docs: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for _, pod in pods(docs) for c in pod["containers"] + pod.get("initContainers", [])}


def test_one_tag_for_every_jotc_image() -> None:
    docs = render("loadtest-values", "--set", "imageTag=2.3.4")
    jotc = {i for i in images(docs) if "jotc-" in i}
    assert {i.rsplit(":", 1)[1] for i in jotc} == {"2.3.4"}
    assert {i.rsplit(":", 1)[0] for i in jotc} == {"jotc-api", "jotc-db-migrations", "jotc-loadtest"}
    assert "tag" in fails("--set", "api.image.tag=9.9.9")  # no per-image tag to drift


def test_digests_are_set_together() -> None:
    digest = "sha256:" + "a" * 64
    assert "together" in fails("--set", f"api.image.digest={digest}")
    docs = render("default", "--set", f"api.image.digest={digest}", "--set", f"migrations.image.digest={digest}")
    assert {i.split("@")[1] for i in images(docs)} == {digest}


# --- Smaller hardening ----------------------------------------------------------------------------


def test_every_pod_gets_the_image_pull_secrets() -> None:
    swarm = "locust.enabled=true,locust.web.existingSecret=jotc-locust-web"
    docs = render("evaluation-values", "--set", swarm, "--set", "imagePullSecrets[0].name=regcred")
    for name, pod in pods(docs):
        assert pod.get("imagePullSecrets") == [{"name": "regcred"}], name


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice (yaml.safe_load keeps the last)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key) for key, _ in node.value]
    duplicated = {k for k in keys if keys.count(k) > 1}
    assert not duplicated, f"duplicate keys {duplicated} at line {node.start_mark.line}"
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


@pytest.mark.parametrize("name", VALUES)
def test_no_duplicate_keys_in_any_manifest(name: str) -> None:
    result = run_helm(
        "template", "rel", str(CHART), *values_args(name), "--set", "api.podLabels.app\\.kubernetes\\.io/name=x"
    )
    assert result.returncode == 0, result.stderr
    list(yaml.load_all(result.stdout, Loader=UniqueKeyLoader))


def test_rollout_and_disruption_settings() -> None:
    docs = render("default")
    deployment = one(docs, "Deployment", "-api")["spec"]
    assert deployment["minReadySeconds"] > 0
    for constraint in deployment["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    assert one(docs, "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_locust_gets_the_admin_token_only_with_the_admin_scenario() -> None:
    def token_in(*extra: str) -> bool:
        docs = render("locust-ui-values", *extra)
        envs = [c["env"] for name, pod in pods(docs) if "locust" in name for c in pod["containers"]]
        return any(e["name"] == "JOTC_ADMIN_TOKEN" for env in envs for e in env)

    assert not token_in("--set", "adminToken.existingSecret=jotc-admin")
    assert token_in("--set", "adminToken.existingSecret=jotc-admin", "--set", "locust.adminScenario=true")
    assert "needs the admin token" in fails("-f", str(VALUES["locust-ui-values"]), "--set", "locust.adminScenario=true")


# --- Secrets: nothing generated, so every render is the same ---------------------------------------

EVALUATION_BY_VALUES = (
    "--set",
    "evaluation.existingSecret=,evaluation.postgresql.password=pg-0123456789,evaluation.redis.password=redis-0123456789",
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("case", [*VALUES, "evaluation-by-values", "admin-by-value"])
def test_two_renders_are_identical(case: str) -> None:
    """What helm template, Argo CD and Flux do: render again. No random value, no lookup."""
    cases = {
        "evaluation-by-values": ["-f", str(VALUES["evaluation-values"]), *EVALUATION_BY_VALUES],
        "admin-by-value": [
            "--set",
            f"adminToken.value={ADMIN_TOKEN}",
            "--set",
            "locust.enabled=true,locust.web.existingSecret=jotc-locust-web",
        ],
    }
    extra = cases[case] if case in cases else values_args(case)
    first, second = (run_helm("template", "rel", str(CHART), *extra) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_no_template_generates_or_looks_up_a_value() -> None:
    nondeterministic = re.compile(
        r"\b(rand\w*|uuidv4|lookup|now|date|genPrivateKey|genCA|genSelfSignedCert|derivePassword)\b"
    )
    for template in sorted((CHART / "templates").rglob("*")):
        if template.is_file():
            actions = " ".join(re.findall(r"{{(.*?)}}", template.read_text(), re.S))
            code = re.sub(r'/\*.*?\*/|"(?:[^"\\]|\\.)*"', "", actions, flags=re.S)  # comments, strings
            assert not nondeterministic.search(code), f"{template.name}: {nondeterministic.search(code)}"


def test_admin_token_from_an_existing_secret_is_the_production_path() -> None:
    docs = render("production-values")
    env = {e["name"]: e for e in api_pod(docs)["containers"][0]["env"]}
    assert env["JOTC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "jotc-admin", "key": "token"}
    assert not find(docs, "Secret")


def test_admin_token_by_value_is_stored_and_rotating_it_rolls_the_pods() -> None:
    def rendered(token: str) -> list[dict[str, Any]]:
        return render("default", "--set", f"adminToken.value={token}")

    docs = rendered("first-token-0123456789-0123456789ab")
    secret = one(docs, "Secret", "-secrets")
    assert secret["data"] == {"token": b64("first-token-0123456789-0123456789ab")}
    env = {e["name"]: e for e in api_pod(docs)["containers"][0]["env"]}
    assert env["JOTC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "rel-jotc-secrets", "key": "token"}

    def checksum(docs: list[dict[str, Any]]) -> str:
        return str(one(docs, "Deployment", "-api")["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    assert checksum(docs) == checksum(rendered("first-token-0123456789-0123456789ab"))
    assert checksum(docs) != checksum(rendered("second-token-0123456789-0123456789a"))
    assert "not both" in fails("--set", f"adminToken.value={ADMIN_TOKEN}", "--set", "adminToken.existingSecret=x")
    assert "schema" in fails("--set", "adminToken.value=short").lower()


def test_notes_say_where_the_admin_token_is_and_how_to_rotate_it() -> None:
    def notes(*extra: str) -> str:
        result = run_helm("install", "--dry-run", "rel", str(CHART), *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "Admin API:          off" in notes()
    by_value = notes("--set", f"adminToken.value={ADMIN_TOKEN}")
    assert "Rotate: helm upgrade rel … --reuse-values --set adminToken.value=" in by_value
    assert "rollout restart deploy/rel-jotc-api" in notes("--set", "adminToken.existingSecret=jotc-admin")


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (
            [
                "--set",
                "api.autoscaling.enabled=true",
                "--set",
                "api.autoscaling.minReplicas=5",
                "--set",
                "api.autoscaling.maxReplicas=3",
            ],
            "minReplicas (5) exceeds maxReplicas (3)",
        ),
        (["--set", "api.podDisruptionBudget.maxUnavailable=0"], "maxUnavailable"),
        (["--set-string", "api.podDisruptionBudget.maxUnavailable=0%"], "maxUnavailable"),
        (["--set", "api.resources.limits=null"], "limits"),
        (["--set", "api.resources.limits.memory=null"], "memory"),
        (["--set", "migrations.activeDeadlineSeconds=600"], "helmTimeoutSeconds"),
        (["--set", "migrations.lockWaitSeconds=300"], "worst-case"),
    ],
)
def test_values_that_would_hurt_are_refused(bad: list[str], said: str) -> None:
    assert said in fails(*bad)


# --- Migrations: the Job fits helm's timeout and knows which failures to retry ---------------------


def test_migration_job_bounds_fit_inside_the_helm_timeout() -> None:
    job = one(render("production-values"), "Job", "-migrate-")
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] + 30 <= 600  # migrations.helmTimeoutSeconds, the README's --timeout 10m
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["JOTC_MIGRATE_LOCK_TIMEOUT"] == "5"
    assert env["JOTC_MIGRATE_LOCK_WAIT_SECONDS"] == "60"
    assert env["JOTC_MIGRATE_STATEMENT_TIMEOUT"] == "60"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "migrate", "operator": "In", "values": [1, 4, 5]},
    }


def test_retention_is_a_cronjob_only_when_days_are_set() -> None:
    assert find(render("production-values"), "CronJob") == []
    docs = render("production-values", "--set", "retention.days=90")
    cron = one(docs, "CronJob", "-retention")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["jotc-retention"]
    assert container["image"] == api_pod(docs)["containers"][0]["image"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JOTC_RETENTION_DAYS"]["value"] == "90"
    assert "DATABASE_URL" in env
    assert pod["restartPolicy"] == "Never"
    policy = one(docs, "NetworkPolicy", "-retention")
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "retention"


def test_evaluation_postgresql_admits_the_retention_job() -> None:
    docs = render("evaluation-values", "--set", "retention.days=30")
    policy = one(docs, "NetworkPolicy", "-postgresql")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][1]["values"]
    assert "retention" in allowed
