"""The chart's NetworkPolicies as a namespace whose policies deny everything else sees them.

For every pod a render makes (Deployments, StatefulSets, Jobs, CronJobs, hook and test pods) the
policies selecting it (same namespace, podSelector matching its labels) are evaluated as Kubernetes
does: a connection between two pods of the release needs the client's egress and the server's
ingress to allow it, on a port the server's container listens on. What each pod may reach beyond the
release (DNS, data services, OTLP) and what may reach it from beyond (the ingress controller,
Prometheus, the Locust UI's users) is read from the rules' other peers, "any" where a rule names
none. Both are compared with the flows each pod needs, exactly. Hook pods must find their policy
in place when they start: a hook of the same events with an earlier weight."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from chart import CHART, find, invalid_on, render, run_helm

ANY = "any"
RELEASE_HOOKS = {"pre-install", "pre-upgrade", "pre-rollback"}


def namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def cidr(block: str) -> dict[str, Any]:
    return {"ipBlock": {"cidr": block}}


KUBE_DNS = {**namespace("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
MONITORING, INGRESS_NGINX, TOOLS = namespace("monitoring"), namespace("ingress-nginx"), namespace("tools")
DATA = "10.20.0.0/16"
# A pooler in the release's namespace, not the release's: CloudNativePG's Pooler pods.
CNPG_POOLER = {"podSelector": {"matchLabels": {"cnpg.io/poolerName": "jotc-db-pooler-rw"}}}


def key(peer: dict[str, Any] | str) -> str:
    return peer if isinstance(peer, str) else json.dumps(peer, sort_keys=True)


def flows(*entries: tuple[int, str, dict[str, Any] | str]) -> set[tuple[int, str, str]]:
    return {(port, protocol, key(peer)) for port, protocol, peer in entries}


def dns(port: int = 53, peer: dict[str, Any] | str = ANY) -> set[tuple[int, str, str]]:
    return flows((port, "UDP", peer), (port, "TCP", peer))


def tcp(port: int, *peers: dict[str, Any] | str) -> set[tuple[int, str, str]]:
    return flows(*((port, "TCP", peer) for peer in peers))


# --- Kubernetes' semantics ------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        matched = {
            "In": present and value in expression.get("values", []),
            "NotIn": not present or value not in expression.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expression["operator"]]
        if not matched:
            return False
    return True


@dataclass(frozen=True)
class Pod:
    role: str  # its component label; helm-test for the test pod, which has none
    kind: str
    name: str
    labels: dict[str, str]
    ports: frozenset[int]
    hooks: frozenset[str]  # helm.sh/hook events; empty: an ordinary resource
    weight: int


def hook_of(obj: dict[str, Any]) -> tuple[frozenset[str], int]:
    annotations = obj["metadata"].get("annotations") or {}
    events = frozenset(e.strip() for e in annotations.get("helm.sh/hook", "").split(",") if e.strip())
    return events, int(annotations.get("helm.sh/hook-weight", "0"))


def pods(docs: list[dict[str, Any]]) -> list[Pod]:
    found = []
    for doc in docs:
        kind = doc["kind"]
        if kind == "Pod":
            template = doc
        elif kind in {"Deployment", "StatefulSet", "Job"}:
            template = doc["spec"]["template"]
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        labels = template["metadata"]["labels"]
        ports = frozenset(p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []))
        events, weight = hook_of(doc)
        role = labels.get("app.kubernetes.io/component", "helm-test")
        found.append(Pod(role, kind, doc["metadata"]["name"], labels, ports, events, weight))
    return found


def policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return find(docs, "NetworkPolicy")


def selecting(docs: list[dict[str, Any]], pod: Pod) -> list[dict[str, Any]]:
    return [p for p in policies(docs) if selects(p["spec"]["podSelector"], pod.labels)]


def rules(docs: list[dict[str, Any]], pod: Pod, direction: str) -> list[dict[str, Any]]:
    """The pod's ingress or egress rules; every pod must be isolated both ways by some policy."""
    chosen = selecting(docs, pod)
    assert chosen, f"no NetworkPolicy selects {pod.name}: under default-deny it is cut off"
    policy_type = direction.capitalize()
    assert all(policy_type in p["spec"]["policyTypes"] for p in chosen), pod.name
    return [rule for p in chosen for rule in p["spec"].get(direction) or []]


def in_release(peer: dict[str, Any]) -> bool:
    """A peer naming pods of the release's own namespace: a podSelector alone."""
    return set(peer) == {"podSelector"}


def ports_of(rule: dict[str, Any]) -> list[tuple[int, str]]:
    assert rule.get("ports"), f"a rule without ports opens every port: {rule}"
    found = []
    for port in rule["ports"]:
        assert isinstance(port["port"], int), f"a named port cannot be checked here: {port}"
        found.append((port["port"], port.get("protocol", "TCP")))
    return found


def lets(rule_set: list[dict[str, Any]], side: str, port: int, other: Pod) -> bool:
    """Does a rule let TCP on this port to (egress) or from (ingress) this pod of the release?"""
    for rule in rule_set:
        if (port, "TCP") not in ports_of(rule):
            continue
        peers = rule.get(side)
        if not peers or any(in_release(p) and selects(p["podSelector"], other.labels) for p in peers):
            return True
    return False


def edges(docs: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(client, server, port): the connections between pods of the release that both sides allow."""
    everyone = pods(docs)
    found = set()
    for client in everyone:
        egress = rules(docs, client, "egress")
        for server in everyone:
            ingress = rules(docs, server, "ingress")
            for port in server.ports:
                if lets(egress, "to", port, server) and lets(ingress, "from", port, client):
                    found.add((client.role, server.role, port))
    return found


def beyond(docs: list[dict[str, Any]], pod: Pod, direction: str) -> set[tuple[int, str, str]]:
    """(port, protocol, peer) this pod may reach (egress) or be reached from (ingress) beyond the
    release's pods: "any" for a rule naming no peer; a podSelector naming none of the release's
    pods (another workload of the namespace) counts."""
    side = "to" if direction == "egress" else "from"
    everyone = pods(docs)
    found = set()
    for rule in rules(docs, pod, direction):
        peers = rule.get(side)
        assert peers is None or peers, f"{pod.name}: an empty `{side}` list"
        outside = [
            peer
            for peer in peers or []
            if not (in_release(peer) and any(selects(peer["podSelector"], other.labels) for other in everyone))
        ]
        for port, protocol in ports_of(rule):
            if not peers:
                found.add((port, protocol, ANY))
            found |= {(port, protocol, key(peer)) for peer in outside}
    return found


# --- The renders and the flows each pod needs -----------------------------------------------------


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    edges: set[tuple[str, str, int]]  # (client role, server role, port) inside the release
    egress: dict[str, set[tuple[int, str, str]]]  # role: what it reaches beyond the release
    ingress: dict[str, set[tuple[int, str, str]]]  # role: what reaches it from beyond (none when absent)


def set_json(path: str, value: Any) -> tuple[str, str]:
    return "--set-json", f"{path}={json.dumps(value)}"


# The releases the cases render, each from the values that make it what its name says.
EVALUATION = (
    "--set",
    "evaluation.existingSecret=jotc-evaluation,evaluation.postgresql.enabled=true,evaluation.redis.enabled=true",
)
FLEET = (
    "--set",
    "database.pooler.type=pgbouncer,database.pooler.existingSecret=login,pgbouncer.serverHost=db.example.internal",
    "--set",
    f"retention.days=90,redis.existingSecret=jotc-redis,api.networkPolicy.externalDataCIDRs={{{DATA}}}",
    "--set",
    "redis.sentinel.enabled=true,redis.sentinel.addresses={sentinel-0.redis:26379,sentinel-1.redis:26379}",
)
EXTERNAL_POOLER = (
    "--set",
    "database.pooler.type=external,database.pooler.host=pooler,database.pooler.existingSecret=l",
)
LOCUST_UI = ("--set", "locust.enabled=true,locust.mode=ui,locust.web.existingSecret=locust-web")
LOCUST_HEADLESS = ("--set", "locust.enabled=true,locust.mode=headless,locust.target=http://jotc.example.com")
OTEL = ("--set", "api.otel.enabled=true,api.otel.endpoint=http://otel-collector.monitoring:4318")
PRODUCTION = (
    "--set",
    f"api.metrics.port=9464,redis.existingSecret=jotc-redis,api.networkPolicy.externalDataCIDRs={{{DATA}}}",
    *set_json("api.networkPolicy.ingressFrom", [INGRESS_NGINX]),
    *set_json("api.networkPolicy.metricsFrom", [MONITORING]),
)


def with_locust(worker: set[tuple[int, str, str]]) -> dict[str, set[tuple[int, str, str]]]:
    """What each pod of a release with the default data services and a Locust swarm reaches beyond
    the release, the workers' target being `worker`."""
    return {
        "api": dns() | tcp(5432, ANY),
        "migrations": dns() | tcp(5432, ANY),
        "locust-master": dns(),
        "locust-worker": dns() | worker,
        "helm-test": dns(),
    }


def in_the_fleet(redis: set[tuple[int, str, str]]) -> dict[str, set[tuple[int, str, str]]]:
    """What each pod of the FLEET release reaches beyond it, Redis and its sentinels being `redis`."""
    return {
        "api": dns() | redis,
        "pgbouncer": dns() | tcp(5432, cidr(DATA)),
        "migrations": dns() | tcp(5432, cidr(DATA)),
        "retention": dns(),
        "helm-test": dns(),
    }


FLEET_EDGES = {("api", "pgbouncer", 6432), ("retention", "pgbouncer", 6432), ("helm-test", "api", 4000)}


SWARM_HEADLESS = {("locust-worker", "locust-master", 5557), ("helm-test", "api", 4000)}
SWARM_TO_THE_API = {
    ("locust-worker", "locust-master", 5557),
    ("locust-worker", "api", 4000),
    ("helm-test", "api", 4000),
}

CASES = {
    # The evaluation StatefulSets: the migration is an ordinary Job; every data path is by selector.
    "evaluation": Case(
        EVALUATION,
        {
            ("api", "postgresql", 5432),
            ("api", "redis", 6379),
            ("migrations", "postgresql", 5432),
            ("helm-test", "api", 4000),
        },
        {"api": dns(), "migrations": dns(), "helm-test": dns(), "postgresql": set(), "redis": set()},
        {"api": tcp(4000, ANY)},
    ),
    # External PostgreSQL and Redis at a CIDR, the migration a hook, Prometheus on the sidecar's port.
    "production": Case(
        PRODUCTION,
        {("helm-test", "api", 4000)},
        {
            "api": dns() | tcp(5432, cidr(DATA)) | tcp(6379, cidr(DATA)),
            "migrations": dns() | tcp(5432, cidr(DATA)),
            "helm-test": dns(),
        },
        {"api": tcp(4000, INGRESS_NGINX) | tcp(9464, MONITORING)},
    ),
    # The sidecar off and no metricsFrom: port 4000 only, to the ingress controller.
    "production-without-sidecar": Case(
        (*PRODUCTION, "--set", "api.metrics.port=0", *set_json("api.networkPolicy.metricsFrom", [])),
        {("helm-test", "api", 4000)},
        {
            "api": dns() | tcp(5432, cidr(DATA)) | tcp(6379, cidr(DATA)),
            "migrations": dns() | tcp(5432, cidr(DATA)),
            "helm-test": dns(),
        },
        {"api": tcp(4000, INGRESS_NGINX)},
    ),
    # The chart's PgBouncer before an external PostgreSQL, Redis through Sentinel, retention on.
    "fleet": Case(
        FLEET,
        FLEET_EDGES,
        in_the_fleet(tcp(6379, cidr(DATA)) | tcp(26379, cidr(DATA))),
        {"api": tcp(4000, ANY)},
    ),
    # PgBouncer before the evaluation PostgreSQL, retention on, traces to a collector's namespace.
    "evaluation-pooled-traced": Case(
        (
            *EVALUATION,
            "--set",
            "database.pooler.type=pgbouncer,retention.days=30",
            *OTEL,
            *set_json("api.otel.egress.to", [MONITORING]),
        ),
        {
            ("api", "pgbouncer", 6432),
            ("retention", "pgbouncer", 6432),
            ("pgbouncer", "postgresql", 5432),
            ("migrations", "postgresql", 5432),
            ("api", "redis", 6379),
            ("helm-test", "api", 4000),
        },
        {
            "api": dns() | tcp(4318, MONITORING),
            "migrations": dns() | tcp(4318, MONITORING),
            "retention": dns() | tcp(4318, MONITORING),
            "pgbouncer": dns(),
            "helm-test": dns(),
            "postgresql": set(),
            "redis": set(),
        },
        {"api": tcp(4000, ANY)},
    ),
    # Headless Locust against the Ingress host: workers to the master and to port 80; no UI to open.
    "locust-headless": Case(
        (*LOCUST_HEADLESS, *set_json("locust.uiFrom", [TOOLS])),
        SWARM_HEADLESS,
        with_locust(tcp(80, ANY)),
        {"api": tcp(4000, ANY)},
    ),
    # Locust's UI against the API Service, with the API behind an ingress controller: the workers
    # are admitted to the API, the UI to locust.uiFrom only.
    "locust-ui": Case(
        (
            *LOCUST_UI,
            *set_json("locust.uiFrom", [TOOLS]),
            *set_json("api.networkPolicy.ingressFrom", [INGRESS_NGINX]),
        ),
        SWARM_TO_THE_API,
        with_locust(set()),
        {"api": tcp(4000, INGRESS_NGINX), "locust-master": tcp(8089, TOOLS)},
    ),
    # Locust through the Ingress: the workers connect to the ingress controller's Service, on 443.
    "locust-through-the-ingress": Case(
        (*LOCUST_HEADLESS, "--set", "locust.target=,api.ingress.enabled=true,api.ingress.tlsSecretName=tls"),
        SWARM_HEADLESS,
        with_locust(tcp(443, ANY)),
        {"api": tcp(4000, ANY)},
    ),
    # Locust's UI with uiFrom empty: nothing reaches port 8089 through the network.
    "locust-ui-closed": Case(
        LOCUST_UI,
        SWARM_TO_THE_API,
        with_locust(set()),
        {"api": tcp(4000, ANY)},
    ),
    # OpenShift's DNS on 5353, data services by selector at their pods' ports behind Services that
    # map other ports, beside a CIDR.
    "selectors-and-target-ports": Case(
        (
            *EXTERNAL_POOLER,
            "--set",
            "database.targetPort=5433,database.pooler.targetPort=6432,redis.existingSecret=r,redis.targetPort=6380",
            "--set",
            "api.networkPolicy.externalDataCIDRs={10.30.0.0/16}",
            *set_json("api.networkPolicy.dns", {"ports": [{"port": 5353, "protocol": p} for p in ("UDP", "TCP")]}),
            *set_json("api.networkPolicy.dns.to", [KUBE_DNS]),
            *set_json("api.networkPolicy.dataPeers.database", [namespace("db")]),
            *set_json("api.networkPolicy.dataPeers.pooler", [CNPG_POOLER]),
            *set_json("api.networkPolicy.dataPeers.redis", [namespace("redis")]),
        ),
        {("helm-test", "api", 4000)},
        {
            "api": dns(5353, KUBE_DNS)
            | tcp(6432, cidr("10.30.0.0/16"), CNPG_POOLER)
            | tcp(6380, cidr("10.30.0.0/16"), namespace("redis")),
            "migrations": dns(5353, KUBE_DNS) | tcp(5433, cidr("10.30.0.0/16"), namespace("db")),
            "helm-test": dns(5353, KUBE_DNS),
        },
        {"api": tcp(4000, ANY)},
    ),
    # The sentinels' pods behind Services that map their port to another.
    "sentinel-target-ports": Case(
        (*FLEET, "--set", "redis.targetPort=6380,redis.sentinel.targetPort=26380"),
        FLEET_EDGES,
        in_the_fleet(tcp(6380, cidr(DATA)) | tcp(26380, cidr(DATA))),
        {"api": tcp(4000, ANY)},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_pods_of_the_release_reach_each_other_exactly_as_they_need(case: str) -> None:
    docs = render("default", *CASES[case].args)
    assert edges(docs) == CASES[case].edges


@pytest.mark.parametrize("case", CASES)
def test_each_pod_reaches_and_is_reached_from_beyond_the_release_exactly_as_it_needs(case: str) -> None:
    expected = CASES[case]
    docs = render("default", *expected.args)
    everyone = pods(docs)
    assert {pod.role for pod in everyone} == set(expected.egress), "the render makes other pods than expected"
    for pod in everyone:
        assert beyond(docs, pod, "egress") == expected.egress[pod.role], f"{pod.name} egress"
        assert beyond(docs, pod, "ingress") == expected.ingress.get(pod.role, set()), f"{pod.name} ingress"


@pytest.mark.parametrize("case", CASES)
def test_every_policy_exists_while_the_pods_it_selects_run(case: str) -> None:
    """A hook pod of pre-install/upgrade/rollback finds its policies made by the same hooks before it
    (an ordinary resource does not exist yet on a first install); an ordinary pod's policies are
    ordinary (a hook's are deleted after the hooks); the helm test pod's are ordinary or earlier test
    hooks (it runs after the release's resources exist)."""
    docs = render("default", *CASES[case].args)
    for pod in pods(docs):
        for policy in selecting(docs, pod):
            events, weight = hook_of(policy)
            name = f"{policy['metadata']['name']} selecting {pod.name}"
            if pod.hooks & RELEASE_HOOKS:
                assert pod.hooks <= events, f"{name}: made for {sorted(events)}, the pod runs at {sorted(pod.hooks)}"
                assert weight < pod.weight, f"{name}: weight {weight} is not before the pod's {pod.weight}"
                annotations = policy["metadata"]["annotations"]
                assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"], name
                assert "hook-failed" not in annotations["helm.sh/hook-delete-policy"], name
            elif pod.hooks == {"test"}:
                assert not events or (events == {"test"} and weight < pod.weight), name
            else:
                assert not events, f"{name}: a hook's policy is deleted after the hooks, the pod keeps running"


def test_the_migration_hooks_policy_is_made_for_exactly_their_events_and_the_evaluation_job_is_plain() -> None:
    """The migration Job runs at pre-install and pre-upgrade (nothing runs at pre-rollback), and its
    hook policy is made for exactly those events; with the evaluation PostgreSQL the migration Job
    is an ordinary one, and so is its policy."""
    production = render("default")
    (job,) = [pod for pod in pods(production) if pod.role == "migrations"]
    assert job.hooks == {"pre-install", "pre-upgrade"}
    (policy,) = selecting(production, job)
    assert hook_of(policy)[0] == job.hooks
    assert policy["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    evaluation = render("default", *EVALUATION)
    (job,) = [pod for pod in pods(evaluation) if pod.role == "migrations"]
    assert not job.hooks
    assert [hook_of(p)[0] for p in selecting(evaluation, job)] == [frozenset()]


def test_no_pod_outside_the_chart_is_let_in_or_out_by_a_chart_policy() -> None:
    """The policies select the release's pods only: a pod of another release, or one without the
    chart's labels, is not selected (it keeps the namespace's own policies)."""
    docs = render("default", *EVALUATION, *LOCUST_UI, "--set", "retention.days=30")
    strangers = [
        {},
        {"app.kubernetes.io/name": "jotc", "app.kubernetes.io/instance": "other"},
        {"app.kubernetes.io/name": "other", "app.kubernetes.io/instance": "rel", "app.kubernetes.io/component": "api"},
    ]
    for labels in strangers:
        assert [p["metadata"]["name"] for p in policies(docs) if selects(p["spec"]["podSelector"], labels)] == []


def test_metrics_from_without_the_sidecar_is_refused_as_it_would_open_the_admin_routes() -> None:
    peer = json.dumps([MONITORING])
    result = run_helm("template", "rel", str(CHART), "--set-json", f"api.networkPolicy.metricsFrom={peer}")
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if "execution error" in line]
    assert "api.networkPolicy.metricsFrom needs api.metrics.port" in line
    assert "admin routes" in line


def test_with_network_policies_off_there_is_none() -> None:
    docs = render("default", *EVALUATION, *LOCUST_UI, "--set", "api.networkPolicy.enabled=false")
    assert policies(docs) == []


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ('dataPeers.database=[{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]', "dataPeers/database/0"),
        ('dataPeers.redis=[{"namespace": "redis"}]', "dataPeers/redis/0"),
        ("ingressFrom=[{}]", "ingressFrom/0"),
        ('dns.ports=[{"port": 53, "protocol": "ICMP"}]', "dns/ports/0/protocol"),
        ("dns.ports=[]", "dns/ports"),
        ('dns.to=[{"ipBlock": {"cidr": "10.0.0.0/8", "exclude": []}}]', "dns/to/0/ipBlock"),
    ],
)
def test_a_malformed_peer_or_port_is_refused_where_it_is_written(bad: str, where: str) -> None:
    result = run_helm("template", "rel", str(CHART), "--set-json", f"api.networkPolicy.{bad}")
    assert result.returncode != 0
    assert f"/api/networkPolicy/{where}" in result.stderr, result.stderr


@pytest.mark.parametrize("case", CASES)
def test_the_policies_are_valid_on_the_oldest_and_newest_kubernetes(case: str) -> None:
    docs = policies(render("default", *CASES[case].args))
    assert invalid_on(30, docs) + invalid_on(35, docs) == []
