"""The chart's Grafana dashboard and Prometheus alerts: the rules pass `promtool check rules` and
fire in `promtool test rules` on made-up series, and every metric they name is one the API exports.

promtool comes from Debian's `prometheus` package, installed as root when missing (as the container
stage installs docker.io); elsewhere the promtool tests are skipped with the reason, and under
CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import one, render
from common import apt_install, can_install
from support import ROOT

API_SOURCE = ROOT / "services/api/src"
MONITORING = ("--set", "api.grafanaDashboard.enabled=true,api.prometheusRule.enabled=true")
# Series that come from elsewhere than the API: Prometheus itself and kube-state-metrics.
NOT_FROM_THE_API = {"up", "kube_deployment_spec_replicas", "kube_deployment_status_replicas_available"}
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "absent",
    "le",
    "without",
    "on",
    "ignoring",
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
    without_matchers = re.sub(r"\{[^}]*\}", " ", expression)
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
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


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
    assert used - exported_metrics() == set()
    # what the issue asks to see: rate, errors, latency percentiles, recorder batches and failures, Redis
    assert {
        "jotc_http_requests_total",
        "jotc_http_request_duration_seconds_bucket",
        "jotc_recorder_batch_rows_bucket",
        "jotc_recorder_failed_rows_total",
        "jotc_redis_failures_total",
    } <= used


def test_the_alerts_query_only_metrics_the_api_exports_or_kubernetes_has() -> None:
    docs = render("default", *MONITORING)
    used = {name for expression in rule_expressions(docs) for name in metric_names(expression)}
    assert used - exported_metrics() - NOT_FROM_THE_API == set()
    alerts = {rule["alert"] for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]}
    assert alerts == {
        "JotcApiServerErrors",
        "JotcApiSlowJumps",
        "JotcRecorderFailing",
        "JotcApiNotReady",
        "JotcApiDown",
    }


def test_dashboard_and_rules_select_this_release_and_are_off_by_default() -> None:
    docs = render("default", *MONITORING)
    for expression in dashboard_expressions(docs) + rule_expressions(docs):
        assert 'namespace="jotc"' in expression, expression
        assert 'job="rel-jotc-api"' in expression or 'deployment="rel-jotc-api"' in expression, expression
    config = one(docs, "ConfigMap", "-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard(docs)["uid"] != dashboard(render("default", *MONITORING, "--namespace", "other"))["uid"]
    default = render("default")
    assert not [d for d in default if d["kind"] == "PrometheusRule" or d["metadata"]["name"].endswith("-dashboard")]
    production = render("production-values")
    assert one(production, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- promtool -----------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if can_install():
        apt_install("prometheus")  # the scripts' one way to install Debian packages
        found = shutil.which("promtool")
        if found:
            return found
    reason = "promtool not found, and installing Debian's prometheus package needs root and apt-get"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the rules must be checked)", pytrace=False)
    pytest.skip(reason)


def write_rules(docs: list[dict[str, Any]], into: Path) -> Path:
    rules = into / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule")["spec"]["groups"]}, sort_keys=False))
    return rules


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd)


@pytest.mark.parametrize("values", ["default", "production-values"])
def test_the_rules_pass_promtool_check_rules(values: str, tmp_path: Path) -> None:
    docs = render(values, *MONITORING)
    write_rules(docs, tmp_path)
    result = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


SELECTOR = 'namespace="jotc", job="rel-jotc-api"'


def requests(status: str, per_minute: int) -> dict[str, str]:
    labels = f'{SELECTOR}, method="POST", route="/jumps", status="{status}"'
    return {"series": f"jotc_http_requests_total{{{labels}}}", "values": f"0+{per_minute}x30"}


def test_the_alerts_fire_on_the_failures_they_name_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    docs = render("default", *MONITORING)
    write_rules(docs, tmp_path)
    healthy = [requests("201", 600), {"series": f"up{{{SELECTOR}}}", "values": "1x30"}]
    failing = [
        requests("201", 600),
        requests("503", 60),  # 60 of 660 answers: 9 %, above the 1 % threshold
        {"series": f"jotc_recorder_failed_rows_total{{{SELECTOR}}}", "values": "0+60x30"},
    ]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": healthy,
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": name, "exp_alerts": []}
                    for name in ("JotcApiServerErrors", "JotcRecorderFailing", "JotcApiDown")
                ],
            },
            {
                "interval": "1m",
                "input_series": failing,
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": "JotcApiServerErrors",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning"},
                                "exp_annotations": {
                                    "summary": "More than 1% of JOTC API answers are 5xx",
                                    "description": "9.091% of answers in jotc/rel-jotc-api were server errors over 5"
                                    " minutes (503: PostgreSQL down, overloaded, or the recorder failing).",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "JotcRecorderFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning"},
                                "exp_annotations": {
                                    "summary": "The JOTC recorder cannot write to PostgreSQL",
                                    "description": "300 requests in jotc/rel-jotc-api were not recorded in 5 minutes"
                                    " (each answered 503).",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "JotcApiDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {
                                    "summary": "No JOTC API target is up",
                                    "description": "Prometheus scrapes no healthy jotc/rel-jotc-api target: every API"
                                    " pod is down, or the ServiceMonitor does not select it.",
                                },
                            }
                        ],
                    },
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
