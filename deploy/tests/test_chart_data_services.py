"""The chart's data side for a fleet, rendered: the API through a transaction-mode pooler (the
chart's PgBouncer or an external one) while the migration keeps its direct URL, the connection
budget counted on both sides of the pooler, Redis found through Sentinel, and the NetworkPolicies
that open exactly those paths."""

from __future__ import annotations

import configparser
from typing import Any

import pytest
from chart import CHART, VALUES, find, one, render, run_helm
from support import ROOT

FLEET = "fleet-values"
EXTERNAL = "external-pooler-values"
# The chart's PgBouncer before the evaluation PostgreSQL (what the container stage runs).
EVALUATION_POOLED = ("-f", str(VALUES["evaluation-values"]), "--set", "database.pooler.type=pgbouncer")
PGBOUNCER_ON = ("--set", "database.pooler.type=pgbouncer,database.pooler.existingSecret=login")
PGBOUNCER_ON += ("--set", "pgbouncer.serverHost=db.example.internal")


def fails(*args: str) -> str:
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode != 0, "rendered, but should have been refused"
    return result.stderr


def refusal(*args: str) -> str:
    """The one line the chart fails with (helm adds its own prefix and a hint after it)."""
    (line,) = [line for line in fails(*args).splitlines() if "execution error" in line]
    return line


def pod_spec(docs: list[dict[str, Any]], kind: str, name_part: str) -> dict[str, Any]:
    obj = one(docs, kind, name_part)
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"]
    spec: dict[str, Any] = template["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Each variable's value, or its valueFrom."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def api_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = pod_spec(docs, "Deployment", "-api")
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def pgbouncer_ini(docs: list[dict[str, Any]]) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(one(docs, "ConfigMap", "-pgbouncer")["data"]["pgbouncer.ini"])
    return ini


# --- Who connects where ----------------------------------------------------------------------------

POOLED_URL = "postgresql://$(JOTC_POOLER_USERNAME):$(JOTC_POOLER_PASSWORD)@rel-jotc-pgbouncer:6432/jotc"
LOGIN = {
    "JOTC_POOLER_USERNAME": {"secretKeyRef": {"name": "jotc-database-login", "key": "username"}},
    "JOTC_POOLER_PASSWORD": {"secretKeyRef": {"name": "jotc-database-login", "key": "password"}},
}


def test_the_api_and_its_init_container_connect_through_pgbouncer_in_transaction_mode() -> None:
    docs = render(FLEET)
    for name in ("wait-for-schema", "api"):
        container = api_containers(docs)[name]
        env = env_of(container)
        assert env["DATABASE_URL"] == POOLED_URL, name
        assert env.items() >= LOGIN.items(), name
        names = [e["name"] for e in container["env"]]
        assert names.index("JOTC_POOLER_PASSWORD") < names.index("DATABASE_URL")  # $(VAR) needs it first
    assert one(docs, "ConfigMap", "-api")["data"]["JOTC_DB_POOLER"] == "transaction"
    # The init container runs jotc-migrate check, a read like /readyz's: no session, no pooler setting.
    assert "JOTC_DB_POOLER" not in env_of(api_containers(docs)["wait-for-schema"])


def test_the_migration_hook_keeps_the_direct_url() -> None:
    docs = render(FLEET)
    job = one(docs, "Job", "-migrate-")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "jotc-database", "key": "url"}}
    assert "JOTC_DB_POOLER" not in env
    assert not {"JOTC_POOLER_USERNAME", "JOTC_POOLER_PASSWORD"} & set(env)


def test_the_retention_job_goes_through_the_pooler() -> None:
    env = env_of(pod_spec(render(FLEET), "CronJob", "-retention")["containers"][0])
    assert env["DATABASE_URL"] == POOLED_URL
    assert env["JOTC_DB_POOLER"] == "transaction"


def test_without_a_pooler_nothing_changes() -> None:
    docs = render("production-values")
    assert not find(docs, "Deployment", "-pgbouncer")
    (config,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == "rel-jotc-api"]
    assert "JOTC_DB_POOLER" not in config["data"]
    for name in ("wait-for-schema", "api"):
        assert env_of(api_containers(docs)[name])["DATABASE_URL"] == {
            "secretKeyRef": {"name": "jotc-database", "key": "url"}
        }


def test_an_external_pooler_such_as_cloudnativepgs_is_reached_at_its_host() -> None:
    docs = render(EXTERNAL)
    assert not find(docs, "Deployment", "-pgbouncer")
    assert not find(docs, "ConfigMap", "-pgbouncer")
    env = env_of(api_containers(docs)["api"])
    assert env["DATABASE_URL"] == (
        "postgresql://$(JOTC_POOLER_USERNAME):$(JOTC_POOLER_PASSWORD)@jotc-db-pooler-rw:5432/app"
    )
    assert env["JOTC_POOLER_PASSWORD"] == {"secretKeyRef": {"name": "jotc-db-app", "key": "password"}}
    migrate = env_of(one(docs, "Job", "-migrate-")["spec"]["template"]["spec"]["containers"][0])
    assert migrate["DATABASE_URL"] == {"secretKeyRef": {"name": "jotc-db-app", "key": "uri"}}
    assert one(docs, "ConfigMap", "-api")["data"]["JOTC_DB_POOLER"] == "transaction"


def test_the_evaluation_postgresql_can_sit_behind_the_charts_pgbouncer() -> None:
    docs = render("default", *EVALUATION_POOLED)
    env = env_of(api_containers(docs)["api"])
    assert env["JOTC_POOLER_USERNAME"] == "jotc"
    assert env["JOTC_POOLER_PASSWORD"] == {"secretKeyRef": {"name": "jotc-evaluation", "key": "postgres-password"}}
    assert pgbouncer_ini(docs)["databases"]["jotc"] == "host=rel-jotc-postgresql port=5432 dbname=jotc"
    migrate = env_of(one(docs, "Job", "-migrate-")["spec"]["template"]["spec"]["containers"][0])
    assert (
        migrate["DATABASE_URL"]
        == "postgresql://jotc:$(JOTC_EVALUATION_POSTGRES_PASSWORD)@rel-jotc-postgresql:5432/jotc"
    )


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (("--set", "database.pooler.type=pgbouncer,pgbouncer.serverHost=db"), "needs database.pooler.existingSecret"),
        (("--set", "database.pooler.type=pgbouncer,database.pooler.existingSecret=x"), "needs pgbouncer.serverHost"),
        (("--set", "database.pooler.type=external,database.pooler.existingSecret=x"), "needs database.pooler.host"),
        ((*PGBOUNCER_ON, "--set", "pgbouncer.preStopSleepSeconds=30"), "must exceed preStopSleepSeconds (30)"),
    ],
)
def test_an_incomplete_pooler_is_refused_saying_what_is_missing(values: tuple[str, ...], said: str) -> None:
    assert said in fails(*values)


@pytest.mark.parametrize(
    "bad",
    [
        "database.pooler.type=session",
        "database.pooler.replicas=1",
        "pgbouncer.settings.pool_mode=session",
        "pgbouncer.settings.auth_type=trust",
    ],
)
def test_a_pooler_that_would_not_be_what_the_api_expects_is_refused_by_the_schema(bad: str) -> None:
    message = fails(*PGBOUNCER_ON, "--set", bad)
    assert "schema" in message.lower(), message


def test_the_evaluation_data_services_run_as_their_images_users_whatever_fixed_uids_says() -> None:
    """Their images start as root, so without a user runAsNonRoot would have the kubelet refuse them
    wherever the platform assigns none."""
    for fixed in ("true", "false"):
        docs = render("evaluation-values", "--set", f"podSecurity.fixedUIDs={fixed}")
        for name, uid in (("-postgresql", 70), ("-redis", 999)):
            security = pod_spec(docs, "StatefulSet", name)["securityContext"]
            assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, uid, uid), fixed
            assert security["runAsNonRoot"] is True
    # JOTC's own pods leave their user to the platform.
    api = pod_spec(render("evaluation-values", "--set", "podSecurity.fixedUIDs=false"), "Deployment", "-api")
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(api["securityContext"])


# --- The chart's PgBouncer -------------------------------------------------------------------------


def test_pgbouncer_is_configured_as_the_api_needs_it() -> None:
    ini = pgbouncer_ini(render(FLEET))
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert settings["ignore_startup_parameters"] == "extra_float_digits"
    assert settings["max_client_conn"] == "1000"
    assert settings["default_pool_size"] == "20"
    assert settings["reserve_pool_size"] == "0"
    assert settings["max_db_connections"] == "20"  # the pool is the ceiling the budget counted
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["server_tls_sslmode"] == "require"  # pgbouncer.settings
    assert settings["listen_port"] == "6432"
    assert dict(ini["databases"]) == {
        "jotc": "host=db.example.internal port=5432 dbname=jotc",
        # /readyz's own entry: in the traffic's pool a saturated pool would turn every pod unready.
        "jotc_readiness": READINESS_ENTRY,
    }


READINESS_ENTRY = "host=db.example.internal port=5432 dbname=jotc pool_size=1 reserve_pool=0 max_db_connections=1"


def test_the_readiness_entry_keeps_one_server_connection_whatever_the_reserve() -> None:
    """The budget counts /readyz's entry as one server connection: the reserve the traffic's pool
    may add (reserve_pool_size) must not apply to it."""
    ini = pgbouncer_ini(render(FLEET, "--set", "database.pooler.reservePoolSize=2,database.connectionBudget=200"))
    assert ini["pgbouncer"]["reserve_pool_size"] == "2"
    assert ini["databases"]["jotc_readiness"] == READINESS_ENTRY


def test_the_api_checks_readiness_through_the_poolers_own_entry() -> None:
    env = env_of(api_containers(render(FLEET))["api"])
    assert env["JOTC_READINESS_DATABASE_URL"] == POOLED_URL + "_readiness"
    assert env["DATABASE_URL"] == POOLED_URL
    external = env_of(api_containers(render(EXTERNAL))["api"])
    assert "JOTC_READINESS_DATABASE_URL" not in external, "an external pooler's entry only when named"
    named = env_of(api_containers(render(EXTERNAL, "--set", "database.pooler.readinessDatabase=jotc_ready"))["api"])
    assert named["JOTC_READINESS_DATABASE_URL"].endswith("/jotc_ready")


def test_pgbouncer_runs_like_the_api_two_or_more_with_a_disruption_budget() -> None:
    docs = render(FLEET)
    deployment = one(docs, "Deployment", "-pgbouncer")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pdb = one(docs, "PodDisruptionBudget", "-pgbouncer")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "pgbouncer"
    pod = deployment["spec"]["template"]["spec"]
    api = pod_spec(docs, "Deployment", "-api")
    assert pod["securityContext"] == api["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["topologySpreadConstraints"]
    (container,) = pod["containers"]
    assert container["securityContext"] == api["containers"][0]["securityContext"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["readinessProbe"]["tcpSocket"]["port"] == "pgbouncer"
    assert container["livenessProbe"]["tcpSocket"]["port"] == "pgbouncer"
    # A safe shutdown (SIGINT) after the endpoints are gone, inside the grace period.
    stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert "sleep 5; kill -INT 1" in stop
    assert pod["terminationGracePeriodSeconds"] > 5
    assert env_of(container).items() >= LOGIN.items()
    assert "exec pgbouncer /etc/pgbouncer/pgbouncer.ini" in container["command"][-1]
    service = one(docs, "Service", "-pgbouncer")["spec"]
    assert service["ports"] == [{"name": "pgbouncer", "port": 6432, "targetPort": "pgbouncer", "protocol": "TCP"}]
    assert container["ports"][0]["containerPort"] == 6432


def test_a_pgbouncer_config_change_rolls_its_pods() -> None:
    def checksum(*extra: str) -> str:
        spec = one(render(FLEET, *extra), "Deployment", "-pgbouncer")["spec"]
        return str(spec["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("--set", "database.pooler.defaultPoolSize=10")


def test_the_pgbouncer_image_is_the_one_compose_and_the_stand_ins_know() -> None:
    """Compose's pooler profile runs the same image, so scripts/standins prepares it for the
    container stage like the evaluation images."""
    compose = (ROOT / "deploy/compose/core.yml").read_text()
    image = pod_spec(render(FLEET), "Deployment", "-pgbouncer")["containers"][0]["image"]
    assert f"image: {image}\n" in compose


# --- The connection budget -------------------------------------------------------------------------


def test_the_twenty_pod_fleet_fits_postgresqls_default_budget_only_through_the_pooler() -> None:
    """fleet-values: (20 + 5 surge + 5 terminating) pods x 2 workers x (4 + 1) = 300 client
    connections + 1 retention against 2 x 1000; PostgreSQL sees (2 + 1 surge + 1 terminating) x (20 + 1)
    + 1 = 85 of 90. Without the pooler the same fleet needs 302 direct connections."""
    render(FLEET)
    message = refusal("-f", str(VALUES[FLEET]), "--set", "database.pooler.type=none")
    assert "the API may open 302 PostgreSQL connections" in message
    assert (
        "(30 pods (max replicas 20 + surge 5 + 5 terminating) x workers 2 x (JOTC_DB_POOL_SIZE 4 + 1 for /readyz)"
        in message
    )
    assert "+ 1 migration, + 1 retention" in message
    assert "database.connectionBudget is 90" in message


def test_the_poolers_server_connections_beyond_the_budget_are_refused() -> None:
    """While the pooler rolls, the surged instance and the one it replaced, still exiting, hold a
    pool each beside the replicas: (2 + 1 + 1) x (20 + 1) + 1 migration = 85."""
    render(FLEET, "--set", "database.connectionBudget=85")
    message = refusal("-f", str(VALUES[FLEET]), "--set", "database.connectionBudget=84")
    assert "the pooler may open 85 PostgreSQL connections" in message
    assert (
        "((database.pooler.replicas 2 + 1 surge + 1 terminating) x (defaultPoolSize 20 + reservePoolSize 0 "
        "+ 1 for /readyz's entry), + 1 migration)" in message
    )
    assert "database.connectionBudget is 84" in message
    reserve = refusal(
        "-f", str(VALUES[FLEET]), "--set", "database.pooler.reservePoolSize=5,database.connectionBudget=104"
    )
    assert "the pooler may open 105 PostgreSQL connections" in reserve


def test_a_pgbouncer_instance_stops_only_once_the_one_stopped_before_it_has_exited() -> None:
    """The budget counts one terminating instance: each new one counts as available (and lets the
    rollout stop the next old one) only after the grace period the stopped one has to exit."""
    for extra in ((), ("--set", "pgbouncer.terminationGracePeriodSeconds=45")):
        deployment = one(render(FLEET, *extra), "Deployment", "-pgbouncer")["spec"]
        assert deployment["minReadySeconds"] == deployment["template"]["spec"]["terminationGracePeriodSeconds"]
    assert one(render(FLEET), "Deployment", "-pgbouncer")["spec"]["minReadySeconds"] == 30


def test_the_apis_connections_beyond_what_the_pooler_accepts_are_refused() -> None:
    # One of the two instances may be away (its disruption budget allows it): the other takes all 301.
    render(FLEET, "--set", "database.pooler.maxClientConn=301")
    message = refusal("-f", str(VALUES[FLEET]), "--set", "database.pooler.maxClientConn=300")
    assert "the API may open 301 connections to the pooler" in message
    assert "but with one instance away it accepts 300 (database.pooler.maxClientConn 300 x (replicas 2 - 1))" in message


def test_the_direct_budget_counts_the_retention_run() -> None:
    # 8 pods (6 + 1 surge + 1 terminating) x 2 workers x 5 = 80, + 1 migration = 81, + 1 retention = 82.
    fits = ["--set", "api.replicaCount=6,api.rollout.maxSurge=1"]
    fits += ["--set-string", "api.resources.limits.cpu=2,api.resources.limits.memory=1Gi"]
    render("default", *fits, "--set", "database.connectionBudget=81")
    message = refusal(*fits, "--set", "database.connectionBudget=81", "--set", "retention.days=30")
    assert "the API may open 82 PostgreSQL connections" in message


# --- Redis Sentinel ---------------------------------------------------------------------------------


def test_sentinel_addresses_and_service_reach_the_api() -> None:
    docs = render(FLEET)
    data = one(docs, "ConfigMap", "-api")["data"]
    assert data["REDIS_SENTINELS"] == ",".join(f"redis-node-{n}.redis-headless.redis.svc:26379" for n in range(3))
    assert data["REDIS_SENTINEL_SERVICE"] == "mymaster"
    # REDIS_URL still comes from its Secret: the password and database.
    assert env_of(api_containers(docs)["api"])["REDIS_URL"] == {"secretKeyRef": {"name": "jotc-redis", "key": "url"}}
    assert not {"REDIS_SENTINELS", "REDIS_SENTINEL_SERVICE"} & set(one(render("default"), "ConfigMap", "-api")["data"])


@pytest.mark.parametrize(
    "bad",
    [
        ("--set", "redis.sentinel.enabled=true"),
        ("--set", "redis.sentinel.enabled=true,redis.sentinel.addresses={sentinel-0}"),
        ("--set", "redis.sentinel.enabled=true,redis.sentinel.addresses={sentinel-0:26379},redis.sentinel.service=a b"),
        ("--set", "redis.sentinel.addresses={sentinel-0:26379},redis.sentinel.extra=1"),
    ],
)
def test_wrong_sentinel_values_are_refused_by_the_schema(bad: tuple[str, ...]) -> None:
    assert "schema" in fails(*bad).lower()


def test_sentinel_with_the_single_evaluation_redis_is_refused() -> None:
    message = fails(
        "-f",
        str(VALUES["evaluation-values"]),
        "--set",
        "redis.sentinel.enabled=true,redis.sentinel.addresses={s:26379}",
    )
    assert "evaluation.redis is a single instance" in message


# --- NetworkPolicies -------------------------------------------------------------------------------


def pod_labels(docs: list[dict[str, Any]], kind: str, name_part: str) -> dict[str, str]:
    obj = one(docs, kind, name_part)
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
    )


def reaches(rules: list[dict[str, Any]], port: int, labels: dict[str, str] | None = None) -> bool:
    """Does an egress (or ingress) rule let traffic on this port to (or from) a pod with these
    labels; labels None: to anything the rule's peers allow at all."""
    for rule in rules:
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        peers = rule.get("to", rule.get("from"))
        if not peers or labels is None:
            return True
        if any(
            "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"], labels)
            for peer in peers
        ):
            return True
    return False


def test_the_api_reaches_pgbouncer_pods_and_the_sentinels_but_not_postgresql() -> None:
    docs = render(FLEET)
    egress = one(docs, "NetworkPolicy", "-api")["spec"]["egress"]
    pgbouncer = pod_labels(docs, "Deployment", "-pgbouncer")
    assert reaches(egress, 6432, pgbouncer)
    assert not reaches(egress, 6432, pod_labels(docs, "Deployment", "-api"))  # by pod selector, not open
    assert not reaches(egress, 5432)
    for port in (6379, 26379, 53):
        assert reaches(egress, port), port
    sentinels = next(rule for rule in egress if 26379 in [p["port"] for p in rule["ports"]])
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in sentinels["to"]
    retention = one(docs, "NetworkPolicy", "-retention")["spec"]["egress"]
    assert reaches(retention, 6432, pgbouncer)
    assert not reaches(retention, 5432)
    assert reaches(one(docs, "NetworkPolicy", "-migrations")["spec"]["egress"], 5432)


def test_only_the_api_and_the_retention_job_reach_pgbouncer_which_reaches_only_postgresql() -> None:
    docs = render(FLEET, "--set", "locust.enabled=true,locust.web.open=true")
    policy = one(docs, "NetworkPolicy", "-pgbouncer")["spec"]
    assert selects(policy["podSelector"], pod_labels(docs, "Deployment", "-pgbouncer"))
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress = policy["ingress"]
    assert reaches(ingress, 6432, pod_labels(docs, "Deployment", "-api"))
    assert reaches(ingress, 6432, pod_labels(docs, "CronJob", "-retention"))
    for stranger in (pod_labels(docs, "Job", "-migrate-"), pod_labels(docs, "Deployment", "locust-worker"), {}):
        assert not reaches(ingress, 6432, stranger)
    egress = policy["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == {53, 5432}
    postgres = next(rule for rule in egress if rule["ports"] == [{"port": 5432, "protocol": "TCP"}])
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in postgres["to"]


def test_an_external_poolers_port_is_opened_to_the_data_cidrs() -> None:
    docs = render(EXTERNAL, "--set", "database.pooler.port=6543,api.networkPolicy.externalDataCIDRs={10.30.0.0/16}")
    egress = one(docs, "NetworkPolicy", "-api")["spec"]["egress"]
    rule = next(rule for rule in egress if rule["ports"] == [{"port": 6543, "protocol": "TCP"}])
    assert {"ipBlock": {"cidr": "10.30.0.0/16"}} in rule["to"]
    assert not reaches(egress, 5432)
    assert not find(docs, "NetworkPolicy", "-pgbouncer")


def test_the_evaluation_postgresql_admits_pgbouncer() -> None:
    docs = render("default", *EVALUATION_POOLED)
    ingress = one(docs, "NetworkPolicy", "-postgresql")["spec"]["ingress"]
    assert reaches(ingress, 5432, pod_labels(docs, "Deployment", "-pgbouncer"))
    assert reaches(one(docs, "NetworkPolicy", "-pgbouncer")["spec"]["egress"], 5432)
