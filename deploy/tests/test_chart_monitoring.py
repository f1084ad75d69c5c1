"""The chart's Grafana dashboard and Prometheus rules: the rules and the dashboard's queries pass
`promtool check rules`, and every metric they name is one the API exports, one they record, or one
of the named outside sources (Prometheus, kube-state-metrics, ingress-nginx). What the alerts do
on made-up series is test_chart_alerts.py's.

promtool comes from Debian's `prometheus` package (prometheus_rules.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import one, render
from prometheus_rules import MONITORING, alerts, rules, run_promtool, write_rules
from support import ROOT

API_SOURCE = ROOT / "services/api/src"
# Series that come from elsewhere than the API: Prometheus itself, kube-state-metrics, ingress-nginx.
NOT_FROM_THE_API = {
    "up",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "nginx_ingress_controller_requests",
    "nginx_ingress_controller_request_duration_seconds_bucket",
    "nginx_ingress_controller_request_duration_seconds_count",
}
PROMQL_WORDS = {
    "sum",
    "max",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "absent",
    "label_replace",
    "le",
    "without",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
}


def exported_metrics() -> set[str]:
    """The series names the API's source declares: a Counter `x` is scraped as `x_total`, a
    Histogram `x` as `x_bucket`, `x_sum` and `x_count`."""
    declared = re.compile(r"\b(Counter|Histogram|Gauge)\(\s*\"(\w+)\"", re.S)
    names: set[str] = set()
    for source in API_SOURCE.rglob("*.py"):
        for kind, name in declared.findall(source.read_text()):
            suffixes = {"Counter": ["_total"], "Histogram": ["_bucket", "_sum", "_count"], "Gauge": [""]}[kind]
            names.update(name + suffix for suffix in suffixes)
    return names


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, keywords and numbers."""
    without_strings = re.sub(r'"[^"]*"', " ", expression)
    without_matchers = re.sub(r"\{[^}]*\}", " ", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", " ", without_groupings)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges))
    return words - PROMQL_WORDS


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = one(docs, "ConfigMap", "-dashboard")
    parsed: dict[str, Any] = json.loads(config["data"]["jotc-api.json"])
    return parsed


def dashboard_expressions(docs: list[dict[str, Any]]) -> list[str]:
    return [target["expr"] for panel in dashboard(docs)["panels"] for target in panel["targets"]]


def rule_expressions(docs: list[dict[str, Any]]) -> list[str]:
    return [rule["expr"] for rule in rules(docs)]


def recorded(docs: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for rule in rules(docs) if "record" in rule}


def test_the_api_declares_the_metrics_this_test_reads() -> None:
    exported = exported_metrics()
    assert {"jotc_http_requests_total", "jotc_http_request_duration_seconds_bucket"} <= exported
    assert {
        "jotc_recorder_batch_rows_bucket",
        "jotc_recorder_failed_rows_total",
        "jotc_redis_failures_total",
    } <= exported


def test_the_dashboard_queries_only_metrics_the_api_exports() -> None:
    docs = render("default", *MONITORING)
    used = {name for expression in dashboard_expressions(docs) for name in metric_names(expression)}
    assert used - exported_metrics() - recorded(docs) == set()
    # the SLOs beside the rest: their 30-day shares, the budget left and the burn rates
    assert {"jotc:availability_errors:ratio_rate30d", "jotc:latency_slow:ratio_rate30d"} <= used
    assert {"jotc:availability_errors:ratio_rate1h", "jotc:latency_slow:ratio_rate1h"} <= used
    # rate, errors, latency percentiles, recorder batches and failures, Redis
    assert {
        "jotc_http_requests_total",
        "jotc_http_request_duration_seconds_bucket",
        "jotc_recorder_batch_rows_bucket",
        "jotc_recorder_failed_rows_total",
        "jotc_redis_failures_total",
    } <= used


def test_the_rules_query_only_metrics_the_api_exports_they_record_or_kubernetes_has() -> None:
    for values in ("default", "production-values"):
        docs = render(values, *MONITORING)
        used = {name for expression in rule_expressions(docs) for name in metric_names(expression)}
        assert used - exported_metrics() - recorded(docs) - NOT_FROM_THE_API == set()
    assert set(alerts(render("default", *MONITORING))) == {
        "JotcApiAvailabilityBudgetBurnFast",
        "JotcApiAvailabilityBudgetBurnSlow",
        "JotcApiLatencyBudgetBurnFast",
        "JotcApiLatencyBudgetBurnSlow",
        "JotcApiUnavailable",
        "JotcApiDown",
        "JotcApiNotReady",
        "JotcRecorderFailing",
        "JotcSchemaReportsFailing",
        "JotcAlertInputsMissing",
    }


def test_the_slos_are_measured_at_the_ingress_when_it_is_on() -> None:
    at_the_api = rule_expressions(render("default", *MONITORING))
    at_the_ingress = render("default", *MONITORING, "--set", "api.ingress.enabled=true")
    assert not [e for e in at_the_api if "nginx_ingress_controller" in e]
    slo = [rule["expr"] for rule in rules(at_the_ingress) if "record" in rule and "jotc_http_request" in rule["expr"]]
    assert slo == [], slo
    chosen = ("--set", "api.ingress.enabled=true,api.prometheusRule.slo.source=api")
    assert [e for e in rule_expressions(render("default", *MONITORING, *chosen)) if "jotc_http_request" in e]
    honoured = ("--set", "api.ingress.enabled=true,api.prometheusRule.ingress.namespaceLabel=namespace")
    ingress = "\n".join(rule_expressions(render("default", *MONITORING, *honoured)))
    assert 'namespace="jotc", ingress="rel-jotc-api"' in ingress
    assert "exported_namespace" not in ingress


def test_dashboard_and_rules_select_this_release_and_are_off_by_default() -> None:
    for docs in (render("default", *MONITORING), render("production-values")):
        for expression in dashboard_expressions(docs) + rule_expressions(docs):
            assert 'namespace="jotc"' in expression, expression
            assert re.search(r'\b(job|deployment|ingress)="rel-jotc-api"', expression), expression
    docs = render("default", *MONITORING)
    config = one(docs, "ConfigMap", "-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard(docs)["uid"] != dashboard(render("default", *MONITORING, "--namespace", "other"))["uid"]
    default = render("default")
    assert not [d for d in default if d["kind"] == "PrometheusRule" or d["metadata"]["name"].endswith("-dashboard")]
    production = render("production-values")
    assert one(production, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_dashboard_shows_the_objectives_of_the_values() -> None:
    objectives = "api.prometheusRule.slo.availability.objective=0.995,api.prometheusRule.slo.latency.seconds=0.1"
    docs = render("default", *MONITORING, "--set-json", objectives)
    panels = {panel["title"]: panel for panel in dashboard(docs)["panels"]}
    availability = panels["Availability, 30 days (objective 0.995)"]
    assert availability["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.995
    assert "Answered within 0.1 s, 30 days (objective 0.99)" in panels
    assert panels["Availability error budget left"]["targets"][0]["expr"].endswith("/ (1 - 0.995)")


# --- promtool -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "count"), [("default", 26), ("production-values", 27)])
def test_the_rules_pass_promtool_check_rules(values: str, count: int, tmp_path: Path) -> None:
    docs = render(values, *MONITORING)
    write_rules(docs, tmp_path)
    result = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} rules found" in result.stdout


def test_the_dashboards_queries_pass_promtool(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's $__rate_interval as 5m), for promtool to parse."""
    expressions = dashboard_expressions(render("production-values"))
    queries = [
        {"record": f"dashboard:query{index}", "expr": expression.replace("$__rate_interval", "5m")}
        for index, expression in enumerate(expressions)
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = run_promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
