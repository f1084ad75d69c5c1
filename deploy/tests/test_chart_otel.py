"""api.otel: the chart passes OpenTelemetry's standard OTEL_* variables to the API container (and
nothing when off), and opens the OTLP endpoint's port in the API's NetworkPolicy."""

from __future__ import annotations

from typing import Any

import pytest
from chart import CHART, invalid_on, one, render, run_helm

ON = "api.otel.enabled=true,api.otel.endpoint=http://otel-collector.monitoring:4318"


def api_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "-api")
    api = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "api")
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in api["env"]}


def api_egress(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(docs, "NetworkPolicy", "rel-jotc-api")["spec"]["egress"]
    return rules


def otlp_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = {53, 5432, 6379}
    return [rule for rule in api_egress(docs) if {port["port"] for port in rule["ports"]} - known]


def test_off_by_default_no_otel_variable_and_no_egress() -> None:
    docs = render("default")
    assert not [name for name in api_env(docs) if name.startswith("OTEL_")]
    assert otlp_rules(docs) == []


def test_on_the_standard_variables_reach_the_api_container() -> None:
    docs = render("default", "--set", ON, "--set-json", 'api.otel.env={"OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a"}')
    env = api_env(docs)
    assert {name: value for name, value in env.items() if name.startswith("OTEL_")} == {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "jotc-api",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=$(K8S_NAMESPACE),k8s.pod.name=$(K8S_POD_NAME),"
        "k8s.deployment.name=rel-jotc-api",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a",
    }
    assert env["K8S_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # $(VAR) expands only variables declared before it
    names = list(env)
    assert names.index("K8S_NAMESPACE") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert invalid_on(35, docs) == []


def test_an_empty_sampler_arg_is_left_out() -> None:
    env = api_env(render("default", "--set", ON + ",api.otel.sampler=parentbased_always_on,api.otel.samplerArg="))
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in env


@pytest.mark.parametrize(
    ("settings", "port"),
    [
        (ON, 4318),
        ("api.otel.enabled=true,api.otel.endpoint=https://otlp.example.com", 443),
        ("api.otel.enabled=true,api.otel.endpoint=http://collector/v1", 80),
        (ON + ",api.otel.egress.port=4317", 4317),
    ],
)
def test_the_network_policy_lets_traces_out_to_the_endpoints_port(settings: str, port: int) -> None:
    assert otlp_rules(render("default", "--set", settings)) == [{"ports": [{"port": port, "protocol": "TCP"}]}]


def test_the_otlp_egress_may_be_limited_to_peers_and_needs_an_endpoint() -> None:
    peer = '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]'
    docs = render("default", "--set", ON, "--set-json", f"api.otel.egress.to={peer}")
    assert otlp_rules(docs)[0]["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # no endpoint: the SDK's default is localhost, inside the pod; nothing to open
    assert otlp_rules(render("default", "--set", "api.otel.enabled=true")) == []


@pytest.mark.parametrize(
    "bad",
    [
        'api.otel.env={"JOTC_RATE_LIMIT": "0"}',  # not an OTEL_ variable
        'api.otel.env={"OTEL_SERVICE_NAME": "x"}',  # set by a field
        'api.otel.protocol="grpc"',  # the API carries OTLP/HTTP only
        'api.otel.endpoint="otel-collector:4318"',  # no scheme
    ],
)
def test_wrong_otel_values_are_refused(bad: str) -> None:
    result = run_helm("template", "rel", str(CHART), "--set-json", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower(), result.stderr


def test_the_migration_and_the_retention_run_trace_under_their_own_names() -> None:
    docs = render("default", "--set", ON + ",retention.days=30")

    def env_of(kind: str, suffix: str) -> dict[str, Any]:
        spec = one(docs, kind, suffix)["spec"]
        pod = spec["jobTemplate"]["spec"]["template"]["spec"] if kind == "CronJob" else spec["template"]["spec"]
        return {item["name"]: item.get("value", item.get("valueFrom")) for item in pod["containers"][0]["env"]}

    migration, retention = env_of("Job", "-migrate-"), env_of("CronJob", "-retention")
    assert migration["OTEL_SERVICE_NAME"] == "jotc-migrate"
    assert migration["OTEL_RESOURCE_ATTRIBUTES"].endswith(",k8s.job.name=rel-jotc-migrate-1")
    assert retention["OTEL_SERVICE_NAME"] == "jotc-retention"
    assert retention["OTEL_RESOURCE_ATTRIBUTES"].endswith(",k8s.cronjob.name=rel-jotc-retention")
    for env in (migration, retention):
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
    for policy in ("rel-jotc-migrations", "rel-jotc-retention"):
        egress = one(docs, "NetworkPolicy", policy)["spec"]["egress"]
        assert any(port["port"] == 4318 for rule in egress for port in rule["ports"]), f"{policy}: spans stay in"
    quiet = render("default", "--set", "retention.days=30")
    for kind, suffix in (("Job", "-migrate-"), ("CronJob", "-retention")):
        spec = one(quiet, kind, suffix)["spec"]
        pod = spec["jobTemplate"]["spec"]["template"]["spec"] if kind == "CronJob" else spec["template"]["spec"]
        assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("OTEL_")], kind
