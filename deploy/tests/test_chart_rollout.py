"""The chart's releases at fleet scale, rendered: the API's rolling update (its bounds, the render-time
refusal of a rollout that cannot finish inside helm's --timeout, the connection budgets counting the
surge and the pods still terminating), the ServiceAccount every pod runs as without a token,
priority classes, UIDs left to the platform, api.settings the chart sets itself, the release
guard's wiring into the migration Job (and no Job at rollback: the running pods report what they
serve), and the helm test that records nothing."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart import CHART, VALUES, find, invalid_on, one, render, run_helm

NEWEST_MINOR = max(
    int(version.split(".")[1]) for version in kubernetes_validate.utils.all_versions() if version.startswith("1.")
)
# Every component of the chart but Locust (whose pods locust.yaml makes) at once: the chart's
# PgBouncer before the evaluation PostgreSQL and Redis, retention, the metrics sidecar.
EVERYTHING = (
    "-f",
    str(VALUES["evaluation-values"]),
    "--set",
    "database.pooler.type=pgbouncer,retention.days=30,api.metrics.port=9464",
)
TWO_WORKERS = ("--set-string", "api.resources.limits.cpu=2,api.resources.limits.memory=1Gi")


def refusal(*args: str) -> str:
    """The one line the chart fails with (helm adds its own prefix and a hint after it)."""
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode != 0, "rendered, but should have been refused"
    (line,) = [line for line in result.stderr.splitlines() if "execution error" in line]
    return line


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart renders, by the name of the object that holds it."""
    found = {}
    for doc in docs:
        if doc["kind"] == "Pod":
            found[doc["metadata"]["name"]] = doc["spec"]
        elif doc["kind"] == "CronJob":
            found[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            found[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return found


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


# --- The rolling update ------------------------------------------------------------------------------


def test_the_rollout_takes_its_bounds_from_values() -> None:
    spec = one(render("default"), "Deployment", "-api")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert spec["minReadySeconds"] == 5
    assert spec["progressDeadlineSeconds"] == 300
    counted = one(
        render("default", "--set", "api.rollout.maxSurge=3,api.rollout.maxUnavailable=1"), "Deployment", "-api"
    )
    assert counted["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 3, "maxUnavailable": 1}


def test_twenty_pods_roll_inside_the_runbooks_ten_minutes_by_default() -> None:
    """25% of 20 is 5 a round: 4 rounds of 60 + 5 s. One pod a round would take 20 x 65 = 1300 s."""
    render("default", "--set", "api.replicaCount=20", *TWO_WORKERS, "--set", "database.connectionBudget=400")
    message = refusal(
        "--set", "api.replicaCount=20,api.rollout.maxSurge=1", *TWO_WORKERS, "--set", "database.connectionBudget=400"
    )
    assert "rolling 20 API pods takes about 1300 s (20 rounds of 1 surge + 0 unavailable" in message
    assert (
        "api.rollout.podStartSeconds 60 + api.minReadySeconds 5), more than migrations.helmTimeoutSeconds (600)"
        in message
    )
    assert "raise api.rollout.maxSurge (e.g. 25%)" in message


def test_the_estimate_is_rounds_of_pod_start_and_min_ready() -> None:
    # One pod a round: 9 x 65 = 585 s fits 600; 10 x 65 = 650 does not.
    render("default", "--set", "api.replicaCount=9,api.rollout.maxSurge=1")
    assert "takes about 650 s (10 rounds" in refusal("--set", "api.replicaCount=10,api.rollout.maxSurge=1")
    # A longer timeout, or quicker pods, admit the same rollout.
    render("default", "--set", "api.replicaCount=10,api.rollout.maxSurge=1,migrations.helmTimeoutSeconds=650")
    render("default", "--set", "api.replicaCount=10,api.rollout.maxSurge=1,api.rollout.podStartSeconds=50")


def test_the_estimate_counts_the_autoscalers_most_replicas() -> None:
    message = refusal("--set", "api.autoscaling.enabled=true,api.autoscaling.maxReplicas=20,api.rollout.maxSurge=1")
    assert "rolling 20 API pods" in message


@pytest.mark.parametrize(
    ("bounds", "said"),
    [
        # A percent of surge rounds up: 10% of 3 is 1 a round.
        (["--set-string", "api.rollout.maxSurge=10%"], "900 s (3 rounds of 1 surge + 0 unavailable"),
        # A percent unavailable rounds down: 50% of 3 is 1, beside 1 surge.
        (
            ["--set", "api.rollout.maxSurge=1", "--set-string", "api.rollout.maxUnavailable=50%"],
            "600 s (2 rounds of 1 surge + 1 unavailable",
        ),
        # Both percents come to 0 at 3 pods: Kubernetes then takes 1 unavailable.
        (
            ["--set-string", "api.rollout.maxSurge=0%,api.rollout.maxUnavailable=10%"],
            "900 s (3 rounds of 0 surge + 1 unavailable",
        ),
    ],
)
def test_percents_resolve_as_kubernetes_resolves_them(bounds: list[str], said: str) -> None:
    # Rounds of 295 + 5 s against a timeout of 330 s: every rollout of 3 pods is refused, saying its rounds.
    slow = ("--set", "api.replicaCount=3,api.rollout.podStartSeconds=295,migrations.helmTimeoutSeconds=330")
    assert f"rolling 3 API pods takes about {said}" in refusal(*slow, *bounds)


@pytest.mark.parametrize("zero", [["--set", "api.rollout.maxSurge=0"], ["--set-string", "api.rollout.maxSurge=0%"]])
def test_a_rollout_that_could_replace_no_pod_is_refused(zero: list[str]) -> None:
    message = refusal(*zero, "--set", "api.rollout.maxUnavailable=0")
    assert "api.rollout.maxSurge and api.rollout.maxUnavailable are both 0" in message
    assert "set maxSurge (e.g. 25%)" in message


def test_a_progress_deadline_kubernetes_would_refuse_or_always_trip_is_refused() -> None:
    message = refusal("--set", "api.rollout.progressDeadlineSeconds=5")
    assert "api.rollout.progressDeadlineSeconds (5) must exceed api.minReadySeconds (5)" in message
    message = refusal("--set", "api.rollout.progressDeadlineSeconds=64")
    assert "shorter than one round of the rollout (65 s: podStartSeconds 60 + minReadySeconds 5)" in message
    render("default", "--set", "api.rollout.progressDeadlineSeconds=65")


@pytest.mark.parametrize(
    "bad", ["api.rollout.maxSurge=-1", "api.rollout.maxSurge=many", "api.rollout.podStartSeconds=0", "api.rollout.x=1"]
)
def test_rollout_values_of_the_wrong_shape_are_rejected_by_the_schema(bad: str) -> None:
    result = run_helm("template", "rel", str(CHART), "--set", bad)
    assert result.returncode != 0
    assert "values don't meet" in result.stderr.lower(), result.stderr


# --- The connection budgets count the surge and the pods still terminating ---------------------------


def test_the_database_budget_counts_surged_and_terminating_pods() -> None:
    """7 replicas + 1 surge + 1 terminating = 9 pods x 2 workers x (4 + 1) = 90, + 1 migration."""
    fits = ("--set", "api.replicaCount=7,api.rollout.maxSurge=1", *TWO_WORKERS)
    render("default", *fits, "--set", "database.connectionBudget=91")
    message = refusal(*fits)
    assert (
        "the API may open 91 PostgreSQL connections (9 pods (max replicas 7 + surge 1 + 1 terminating) x workers 2"
        in message
    )
    # The default 25% of 7 is 2 a round: 2 surged and 2 terminating.
    assert "(11 pods (max replicas 7 + surge 2 + 2 terminating)" in refusal("--set", "api.replicaCount=7", *TWO_WORKERS)


def test_pods_stopped_as_unavailable_terminate_beside_the_surge() -> None:
    message = refusal("--set", "api.replicaCount=7,api.rollout.maxSurge=1,api.rollout.maxUnavailable=1", *TWO_WORKERS)
    assert "(10 pods (max replicas 7 + surge 1 + 2 terminating)" in message


def test_rounds_shorter_than_the_grace_period_overlap_their_terminating_pods() -> None:
    """Rounds of 10 + 5 s: the pods of 3 rounds may still be inside their 40 s grace period."""
    message = refusal("--set", "api.replicaCount=7,api.rollout.maxSurge=1,api.rollout.podStartSeconds=10", *TWO_WORKERS)
    assert "(11 pods (max replicas 7 + surge 1 + 3 terminating)" in message


def test_the_redis_budget_counts_surged_and_terminating_pods() -> None:
    # 9 pods x 2 workers x 16 = 288.
    fits = ("--set", "api.replicaCount=7,api.rollout.maxSurge=1,database.connectionBudget=91", *TWO_WORKERS)
    render("default", *fits, "--set", "redis.connectionBudget=288")
    message = refusal(*fits, "--set", "redis.connectionBudget=287")
    assert (
        "the API may open 288 Redis connections (9 pods (max replicas 7 + surge 1 + 1 terminating) x workers 2"
        in message
    )


def test_the_poolers_client_budget_counts_them_too() -> None:
    fleet = ("-f", str(VALUES["fleet-values"]))
    # fleet-values: 20 + 5 surge + 5 terminating = 30 pods x 2 x 5 = 300, + 1 retention; one of 2 away.
    render("default", *fleet, "--set", "database.pooler.maxClientConn=301")
    message = refusal(*fleet, "--set", "database.pooler.maxClientConn=300")
    assert (
        "the API may open 301 connections to the pooler (30 pods (max replicas 20 + surge 5 + 5 terminating)" in message
    )


# --- api.settings the chart sets itself -------------------------------------------------------------


# What the chart gives the API container itself that api.settings could also name (the schema admits
# JOTC_*, LOG_LEVEL and LOG_FORMAT there, and refuses JOTC_ADMIN_TOKEN, a secret, on its own).
CHART_SETS = [
    "JOTC_DB_POOLER",
    "JOTC_DRAIN_SECONDS",
    "JOTC_EVALUATION_POSTGRES_PASSWORD",
    "JOTC_EVALUATION_REDIS_PASSWORD",
    "JOTC_POOLER_PASSWORD",
    "JOTC_POOLER_USERNAME",
    "JOTC_READINESS_DATABASE_URL",
    "JOTC_SHUTDOWN_TIMEOUT",
    "JOTC_WORKERS",
]


def test_the_list_is_every_setting_the_chart_sets() -> None:
    """Found in renders with every switch that adds one on: the API's ConfigMap and env, less the
    settings values.yaml itself gives."""
    docs = render(
        "default",
        *EVERYTHING,
        "--set",
        "api.otel.enabled=true,adminToken.value=0123456789abcdef0123456789abcdef",  # pragma: allowlist secret
    )
    names: set[str] = set()
    for rendered in (docs, render("evaluation-values"), render("fleet-values")):  # direct, and Sentinel
        names |= set(one(rendered, "ConfigMap", "-api")["data"]) | set(env_of(pod_specs(rendered)["rel-jotc-api"]))
    names -= set(yaml.safe_load((CHART / "values.yaml").read_text())["api"]["settings"])
    settable = {name for name in names if re.fullmatch(r"JOTC_[A-Z_]+|LOG_LEVEL|LOG_FORMAT", name)}
    assert settable == {*CHART_SETS, "JOTC_ADMIN_TOKEN"}


@pytest.mark.parametrize("name", CHART_SETS)
def test_a_setting_the_chart_sets_itself_is_refused_naming_the_value_to_use(name: str) -> None:
    message = refusal("--set", f"api.settings.{name}=1")
    assert f"api.settings.{name} is set by the chart itself, which would ignore this one: set " in message
    instead = message.split(": set ")[1].split(" instead")[0]
    for value in instead.split(" or "):
        path = value.split(".")
        node: Any = json.loads((CHART / "values.schema.json").read_text())
        for key in path:
            node = node["properties"][key]  # the value named exists


def test_drain_seconds_comes_from_api_drain_seconds_once() -> None:
    text = run_helm("template", "rel", str(CHART), "--set", "api.drainSeconds=9").stdout
    assert text.count("JOTC_DRAIN_SECONDS") == 1
    assert (
        one(render("default", "--set", "api.drainSeconds=9"), "ConfigMap", "-api")["data"]["JOTC_DRAIN_SECONDS"] == "9"
    )
    assert "set api.drainSeconds instead" in refusal("--set", "api.settings.JOTC_DRAIN_SECONDS=30")


# --- ServiceAccount, priority, UIDs ------------------------------------------------------------------


PRODUCTION_POOLED = (
    "--set",
    "database.pooler.type=pgbouncer,database.pooler.existingSecret=login,pgbouncer.serverHost=db,retention.days=30",
)


@pytest.mark.parametrize(
    ("values", "hook_jobs"),
    [(PRODUCTION_POOLED, {"rel-jotc-migrate-1"}), (EVERYTHING, set())],
)
def test_every_pod_runs_as_the_charts_service_account_without_a_token(
    values: tuple[str, ...], hook_jobs: set[str]
) -> None:
    docs = render("default", *values)
    accounts = find(docs, "ServiceAccount")
    assert {a["metadata"]["name"] for a in accounts} == {"rel-jotc"} | ({"rel-jotc-hooks"} if hook_jobs else set())
    assert all(account["automountServiceAccountToken"] is False for account in accounts)
    hooks = {d["metadata"]["name"] for d in find(docs, "Job") if "helm.sh/hook" in d["metadata"].get("annotations", {})}
    assert hooks == hook_jobs
    pods = {name: spec for name, spec in pod_specs(docs).items()}
    assert {
        "rel-jotc-api",
        "rel-jotc-pgbouncer",
        "rel-jotc-retention",
        "rel-jotc-migrate-1",
        "rel-jotc-test-jumps",
    } <= set(pods)
    for name, spec in pods.items():
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == ("rel-jotc-hooks" if name in hooks else "rel-jotc"), name


def test_the_hooks_service_account_exists_before_the_hook_jobs() -> None:
    docs = render("default", "--set", "database.url=postgresql://jotc@db/jotc")
    account = one(docs, "ServiceAccount", "-hooks")["metadata"]["annotations"]
    for job in find(docs, "Job"):
        annotations = job["metadata"]["annotations"]
        assert set(annotations["helm.sh/hook"].split(",")) <= set(account["helm.sh/hook"].split(","))
        assert int(account["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    # The migration URL's Secret exists for the migration Job's events, and no other.
    secret = one(docs, "Secret", "-migrations")["metadata"]["annotations"]
    assert secret["helm.sh/hook"] == one(docs, "Job", "-migrate-")["metadata"]["annotations"]["helm.sh/hook"]
    assert int(secret["helm.sh/hook-weight"]) < 0
    # With the evaluation PostgreSQL the migration is an ordinary Job: no hook, no hook account.
    evaluation = render("evaluation-values")
    assert [d["metadata"]["name"] for d in find(evaluation, "ServiceAccount")] == ["rel-jotc"]


def test_a_service_account_of_your_own() -> None:
    docs = render("default", *EVERYTHING, "--set", "serviceAccount.create=false,serviceAccount.name=mine")
    assert not find(docs, "ServiceAccount")
    assert {spec["serviceAccountName"] for spec in pod_specs(docs).values()} == {"mine"}
    default = render("default", "--set", "serviceAccount.create=false")
    assert {spec["serviceAccountName"] for spec in pod_specs(default).values()} == {"default"}
    named = render("default", "--set", "serviceAccount.name=jotc-sa,serviceAccount.annotations.role=arn")
    accounts = {d["metadata"]["name"]: d["metadata"]["annotations"] for d in find(named, "ServiceAccount")}
    assert accounts["jotc-sa"] == {"role": "arn"}
    assert accounts["jotc-sa-hooks"]["role"] == "arn"


def test_priority_classes_are_set_only_when_named() -> None:
    pooled = ("--set", "database.pooler.type=pgbouncer,database.pooler.existingSecret=login,pgbouncer.serverHost=db")
    pods = pod_specs(render("default", *pooled))
    assert "priorityClassName" not in pods["rel-jotc-api"]
    assert "priorityClassName" not in pods["rel-jotc-pgbouncer"]
    named = pod_specs(
        render("default", *pooled, "--set", "api.priorityClassName=jotc-api,pgbouncer.priorityClassName=jotc-data")
    )
    assert named["rel-jotc-api"]["priorityClassName"] == "jotc-api"
    assert named["rel-jotc-pgbouncer"]["priorityClassName"] == "jotc-data"


def test_fixed_uids_are_each_images_user() -> None:
    uids = {
        name: spec["securityContext"].get("runAsUser")
        for name, spec in pod_specs(render("default", *EVERYTHING)).items()
    }
    assert uids["rel-jotc-postgresql"] == 70
    assert uids["rel-jotc-redis"] == 999
    assert {uid for name, uid in uids.items() if name not in {"rel-jotc-postgresql", "rel-jotc-redis"}} == {10001}


def test_without_fixed_uids_the_platform_assigns_them_and_pods_stay_non_root() -> None:
    docs = render("default", *EVERYTHING, "--set", "podSecurity.fixedUIDs=false")
    # The evaluation PostgreSQL and Redis keep their images' users: those images start as root.
    evaluation = {"rel-jotc-postgresql", "rel-jotc-redis"}
    specs = pod_specs(docs)
    assert evaluation <= set(specs), "the render has no evaluation data services to except"
    for name, spec in specs.items():
        security = spec["securityContext"]
        if name in evaluation:
            assert security["runAsUser"] in (70, 999), name
            continue
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(security), name
        assert security["runAsNonRoot"] is True, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            assert "runAsUser" not in container["securityContext"], (name, container["name"])


def test_the_fleet_switches_are_valid_kubernetes() -> None:
    docs = render(
        "default",
        *EVERYTHING,
        "--set",
        "podSecurity.fixedUIDs=false,serviceAccount.annotations.a=b,api.priorityClassName=p,pgbouncer.priorityClassName=p",
        "--set",
        "api.rollout.maxSurge=2,api.rollout.maxUnavailable=1,migrations.servingRevision=0003,migrations.allowBreaking=true",
    )
    docs += render("default", "--set", "database.url=postgresql://jotc@db/jotc")
    assert not invalid_on(NEWEST_MINOR, docs)


# --- The release guard: the migration Job, and nothing at rollback --------------------------------------


def test_the_release_guard_settings_reach_the_migration_job_only_when_set() -> None:
    default = env_of(pod_specs(render("default"))["rel-jotc-migrate-1"])
    assert not {"JOTC_MIGRATE_SERVING_REVISION", "JOTC_MIGRATE_ALLOW_BREAKING"} & set(default)
    guarded = render("default", "--set", "migrations.servingRevision=0003,migrations.allowBreaking=true")
    env = env_of(pod_specs(guarded)["rel-jotc-migrate-1"])
    assert env["JOTC_MIGRATE_SERVING_REVISION"] == "0003"
    assert env["JOTC_MIGRATE_ALLOW_BREAKING"] == "true"


@pytest.mark.parametrize(
    "values", [(), ("--set", "database.url=postgresql://jotc@db/jotc"), ("--set", "api.otel.enabled=true")]
)
def test_the_only_job_is_the_migration_and_a_rollback_runs_none(values: tuple[str, ...]) -> None:
    """The next upgrade's guard reads what the restored pods report (jotc_schema_readers), so a
    rollback needs no hook: no Job, hook Secret or hook NetworkPolicy runs at pre-rollback."""
    docs = render("default", *values)
    (job,) = find(docs, "Job")
    assert job["metadata"]["name"] == "rel-jotc-migrate-1"
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["upgrade"]
    at_rollback = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in {"Job", "Secret", "NetworkPolicy"}
        and "pre-rollback" in d["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    ]
    assert at_rollback == []


def test_the_migration_is_an_ordinary_job_where_it_is_not_a_hook() -> None:
    docs = render("evaluation-values")
    assert [d["metadata"]["name"] for d in find(docs, "Job")] == ["rel-jotc-migrate-1"]
    assert "annotations" not in one(docs, "Job", "-migrate-")["metadata"]


# --- helm test records nothing ------------------------------------------------------------------------


def test_helm_test_is_refused_by_the_public_route_and_records_nothing() -> None:
    """The test pod's input is one the API refuses 422 unreachable, before anything is recorded: two
    thunderheads in a row at the default max_jump of 2, every cloud 0 or 1, the last 0."""
    pod = one(render("default"), "Pod", "test-jumps")
    script = pod["spec"]["containers"][0]["command"][-1]
    compile(script, "test-jumps", "exec")
    assert 'api = "http://rel-jotc-api:4000"' in script
    body = json.loads(re.search(r"json\.dumps\((\{.*?\})\)", script).group(1))  # type: ignore[union-attr]
    assert "max_jump" not in body
    clouds = body["clouds"]
    assert set(clouds) <= {0, 1}
    assert clouds[0] == clouds[-1] == 0
    assert "1, 1" in json.dumps(clouds)
    assert 'problem["type"] == "/problems/unreachable"' in script
    assert "refusal.code == 422" in script
