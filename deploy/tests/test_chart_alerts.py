"""The chart's alerts: what each one promises, on made-up series through `promtool test rules`, and
what every one carries, read from the rendered PrometheusRule.

The scenarios: PostgreSQL down (every pod unready, the ingress answering 503 by itself, no request
reaching the API, Prometheus still scraping the pods) pages within 3 minutes, measured at the
ingress, at the API, and without kube-state-metrics; series the rules cannot find warn; every target
gone pages; one unready pod of twenty is a warning; budget
burns (errors and latency, fast and slow) page or open a ticket; a healthy API is quiet. At each
checked moment every alert of the rule file is stated, firing (with its exact labels) or not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chart import CHART, run_helm
from prometheus_rules import JOB, NAMESPACE, RELEASE_LABELS, alerts, promtool_test, rendered_rules, rules, write_rules
from support import ROOT

RUNBOOK = ROOT / "docs/runbook.md"
INGRESS = {"exported_namespace": NAMESPACE, "namespace": "ingress-nginx", "job": "ingress-nginx-controller-metrics"}
KUBE_STATE = {"namespace": NAMESPACE, "deployment": JOB, "job": "kube-state-metrics"}
PAGES = {
    "JotcApiAvailabilityBudgetBurnFast",
    "JotcApiLatencyBudgetBurnFast",
    "JotcApiUnavailable",
    "JotcApiIngressErrors",
    "JotcApiDown",
}
TICKETS = {"JotcApiAvailabilityBudgetBurnSlow", "JotcApiLatencyBudgetBurnSlow"}
WARNINGS = {"JotcApiNotReady", "JotcRecorderFailing", "JotcSchemaReportsFailing", "JotcAlertInputsMissing"}


def series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    matchers = ", ".join(f'{name}="{value}"' for name, value in labels.items())
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def api(metric: str, values: str, **labels: str) -> dict[str, str]:
    return series(metric, {**RELEASE_LABELS, "pod": "rel-jotc-api-1", **labels}, values)


def jumps(status: str, values: str) -> dict[str, str]:
    return api("jotc_http_requests_total", values, method="POST", route="/jumps", status=status)


def durations(fast: str, every: str) -> list[dict[str, str]]:
    """POST /jumps's histogram: `fast` counts answers within the SLO's 0.25 s, `every` all of them."""
    labels = {"method": "POST", "route": "/jumps"}
    return [
        api("jotc_http_request_duration_seconds_bucket", fast, le="0.25", **labels),
        api("jotc_http_request_duration_seconds_bucket", every, le="+Inf", **labels),
        api("jotc_http_request_duration_seconds_count", every, **labels),
    ]


def ingress(status: str, values: str) -> dict[str, str]:
    labels = {**INGRESS, "ingress": JOB, "service": JOB, "method": "POST", "path": "/jumps", "status": status}
    return series("nginx_ingress_controller_requests", labels, values)


def ingress_durations(fast: str, every: str) -> list[dict[str, str]]:
    labels = {**INGRESS, "ingress": JOB, "service": JOB, "method": "POST", "path": "/jumps", "status": "201"}
    name = "nginx_ingress_controller_request_duration_seconds"
    return [
        series(f"{name}_bucket", {**labels, "le": "0.25"}, fast),
        series(f"{name}_bucket", {**labels, "le": "+Inf"}, every),
        series(f"{name}_count", labels, every),
    ]


def replicas(desired: str, available: str) -> list[dict[str, str]]:
    return [
        series("kube_deployment_spec_replicas", KUBE_STATE, desired),
        series("kube_deployment_status_replicas_available", KUBE_STATE, available),
    ]


def ready(values: str, pod: str = "rel-jotc-api-1") -> dict[str, str]:
    """One pod's jotc_ready: 1 while its latest /readyz answer was 200, 0 while 503."""
    return api("jotc_ready", values, pod=pod)


def up(values: str) -> dict[str, str]:
    return series("up", {**RELEASE_LABELS, "pod": "rel-jotc-api-1", "instance": "10.0.0.1:4000"}, values)


def severity(alert: str) -> str:
    return "page" if alert in PAGES else "ticket" if alert in TICKETS else "warning"


Firing = dict[str, tuple[dict[str, str], str | None]]


def expect(rules: dict[str, dict[str, Any]], at: str, firing: Firing) -> list[dict[str, Any]]:
    """Every alert of the rule file at `at`: those in `firing` with the exact labels promtool
    compares (the release's, its severity and the extra ones given) and their annotations, the
    description's `$value` shown as given (None: it has none); the others quiet."""
    checks = []
    for name, rule in rules.items():
        expected = []
        if name in firing:
            extra, value = firing[name]
            labels = {**RELEASE_LABELS, "severity": severity(name), **extra}
            annotations = {key: expanded(text, labels, value) for key, text in rule["annotations"].items()}
            expected = [{"exp_labels": labels, "exp_annotations": annotations}]
        checks.append({"eval_time": at, "alertname": name, "exp_alerts": expected})
    return checks


def expanded(annotation: str, labels: dict[str, str], value: str | None) -> str:
    """An annotation as Prometheus writes it for an alert of these labels and `$value` shown as given."""
    with_value = re.sub(r"\{\{ \$value[^}]*\}\}", value or "", annotation)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda label: labels[label[1]], with_value)


def run(values: str, tests: list[dict[str, Any]], tmp_path: Path, *extra: str) -> None:
    """promtool test rules: each test's alert_rule_test is a function of the rendered alerts."""
    docs = rendered_rules(values, *extra)
    write_rules(docs, tmp_path)
    rules = alerts(docs)
    promtool_test(
        [{**test, "alert_rule_test": test["alert_rule_test"](rules)} for test in tests], ["rules.yaml"], tmp_path
    )


def test_every_alert_is_one_the_scenarios_name() -> None:
    assert set(alerts(rendered_rules("default"))) == PAGES - {"JotcApiIngressErrors"} | TICKETS | WARNINGS
    assert set(alerts(rendered_rules("production-values"))) == PAGES | TICKETS | WARNINGS


# --- promtool test rules -------------------------------------------------------------------------


def test_postgresql_down_pages_within_3_minutes_at_the_ingress(tmp_path: Path) -> None:
    """Up to 30m healthy: 600 POSTs a minute through the ingress, 20 pods. From then on PostgreSQL is
    unreachable: every pod fails /readyz (none available), the ingress answers 503 by itself, no
    request reaches the API (its counters stand still), and Prometheus still scrapes the pods."""
    healthy_then_down = [
        ingress("201", "0+600x30 18000x10"),
        ingress("503", "0x30 600+600x10"),
        *ingress_durations("0+600x40", "0+600x40"),  # the 503s are quick
        jumps("201", "0+600x30 18000x10"),
        *durations("0+600x30 18000x10", "0+600x30 18000x10"),
        *replicas("20x40", "20x30 0x10"),
        ready("1x30 0x10"),  # both views see it: one alert
        up("1x40"),
    ]
    run(
        "production-values",
        [
            {
                "interval": "1m",
                "input_series": healthy_then_down,
                "alert_rule_test": lambda rules: [
                    *expect(rules, "30m", {}),
                    *expect(
                        rules,
                        "33m",
                        {
                            "JotcApiUnavailable": ({}, None),
                            "JotcApiIngressErrors": ({}, "100%"),
                            "JotcApiAvailabilityBudgetBurnFast": ({}, "9.091%"),
                            "JotcApiAvailabilityBudgetBurnSlow": ({}, "9.091%"),
                        },
                    ),
                ],
            }
        ],
        tmp_path,
    )


# PostgreSQL down from 30m, seen at the API: the POSTs stop arriving, the pods' /readyz answer 503.
DOWN_AT_THE_API = [
    jumps("201", "0+600x30 18000x10"),
    *durations("0+600x30 18000x10", "0+600x30 18000x10"),
    ready("1x30 0x10"),
    up("1x40"),
]


def test_postgresql_down_pages_within_3_minutes_without_an_ingress(tmp_path: Path) -> None:
    """The same outage measured at the API (no Ingress): no request arrives, so no SLO burns; the
    Deployment having no available pod pages."""
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [*DOWN_AT_THE_API, *replicas("20x40", "20x30 0x10")],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "31m", {}),  # pending: the outage is a minute old
                    *expect(rules, "33m", {"JotcApiUnavailable": ({}, None)}),
                ],
            }
        ],
        tmp_path,
    )


def test_postgresql_down_pages_within_3_minutes_without_kube_state_metrics(tmp_path: Path) -> None:
    """The same outage with neither an ingress nor kube-state-metrics: Prometheus still scrapes the
    unready pods, whose latest /readyz answers are 503 (jotc_ready 0). The page comes from that; the missing
    kube-state-metrics is a warning of its own from 15 minutes on."""
    missing = {"JotcAlertInputsMissing": ({"deployment": JOB, "input": "kube-state-metrics"}, None)}
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [*DOWN_AT_THE_API, ready("1x30 0x10", pod="rel-jotc-api-2")],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "10m", {}),
                    *expect(rules, "31m", missing),  # pending: the outage is a minute old
                    *expect(rules, "33m", {**missing, "JotcApiUnavailable": ({}, None)}),
                ],
            }
        ],
        tmp_path,
    )


def test_kube_state_metrics_lost_during_an_outage_leaves_its_page_as_it_is(tmp_path: Path) -> None:
    """kube-state-metrics gone from 33m to 36m while PostgreSQL is down: the pods' own view holds the
    same alert (the same labels), so it neither resolves nor starts again."""
    down = {"JotcApiUnavailable": ({}, None)}
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [
                    *DOWN_AT_THE_API,
                    series("kube_deployment_spec_replicas", KUBE_STATE, "20x32 stale _x3 20x4"),
                    series("kube_deployment_status_replicas_available", KUBE_STATE, "20x30 0 0 stale _x3 0x4"),
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "33m", down),
                    *expect(rules, "35m", down),
                    *expect(rules, "38m", down),
                ],
            }
        ],
        tmp_path,
    )


def test_ingress_series_the_slos_cannot_find_are_a_warning(tmp_path: Path) -> None:
    """The SLOs measured at the ingress, but the controller's series hold the Ingress's namespace in
    `namespace` where the chart reads `exported_namespace`: every SLO alert would stay silent."""
    mislabelled = {**INGRESS, "namespace": NAMESPACE, "exported_namespace": "ingress-nginx"}
    labels = {**mislabelled, "ingress": JOB, "service": JOB, "method": "POST", "path": "/jumps", "status": "201"}
    run(
        "production-values",
        [
            {
                "interval": "1m",
                "input_series": [
                    series("nginx_ingress_controller_requests", labels, "0+600x40"),
                    jumps("201", "0+600x40"),
                    *durations("0+600x40", "0+600x40"),
                    *replicas("2x40", "2x40"),
                    up("1x40"),
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "10m", {}),
                    *expect(rules, "30m", {"JotcAlertInputsMissing": ({"input": "ingress-nginx"}, None)}),
                ],
            }
        ],
        tmp_path,
    )


def test_every_target_gone_pages_and_a_scaled_to_zero_api_does_not(tmp_path: Path) -> None:
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [
                    jumps("201", "0+600x30"),
                    *durations("0+600x30", "0+600x30"),
                    up("1x30 stale"),
                    ready("1x30 stale"),
                    # every pod gone while two are wanted
                    *replicas("2x40", "2x30 0x10"),
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "31m", {}),
                    *expect(
                        rules,
                        "33m",
                        {"JotcApiDown": ({}, None), "JotcApiUnavailable": ({}, None)},
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    jumps("201", "0+600x30"),
                    *durations("0+600x30", "0+600x30"),
                    up("1x30 stale"),
                    ready("1x30 0 stale"),  # the pods drain (503), then are gone
                    # scaled to zero on purpose: nothing desired, nothing available, no page for it
                    *replicas("2x30 0x10", "2x30 0x10"),
                ],
                "alert_rule_test": lambda rules: [*expect(rules, "33m", {}), *expect(rules, "40m", {})],
            },
        ],
        tmp_path,
    )


def test_one_unready_pod_of_twenty_is_a_warning_not_a_page(tmp_path: Path) -> None:
    healthy_traffic = [
        ingress("201", "0+600x60"),
        *ingress_durations("0+600x60", "0+600x60"),
        jumps("201", "0+600x60"),
        *durations("0+600x60", "0+600x60"),
        up("1x60"),
    ]
    run(
        "production-values",
        [
            {
                "interval": "1m",
                "input_series": [
                    *healthy_traffic,
                    *replicas("20x60", "20x20 19x40"),
                    ready("1x20 0x40"),  # this pod unready from 20m
                    ready("1x60", pod="rel-jotc-api-2"),  # the others ready
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "25m", {}),  # not yet 10 minutes
                    *expect(rules, "40m", {"JotcApiNotReady": ({"deployment": JOB}, "1")}),
                ],
            }
        ],
        tmp_path,
    )


def test_the_recorder_failing_is_a_warning(tmp_path: Path) -> None:
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [
                    jumps("201", "0+600x20"),
                    *durations("0+600x20", "0+600x20"),
                    *replicas("2x20", "2x20"),
                    up("1x20"),
                    api("jotc_recorder_failed_rows_total", "0x10 0+6x10"),
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "10m", {}),
                    *expect(rules, "15m", {"JotcRecorderFailing": ({}, "24")}),
                ],
            }
        ],
        tmp_path,
    )


def test_lasting_failures_to_report_the_schema_revision_warn_and_one_does_not(tmp_path: Path) -> None:
    """From 10m every report fails (two a minute); in the other run one report fails, once."""
    steady = [jumps("201", "0+600x60"), *durations("0+600x60", "0+600x60"), *replicas("2x60", "2x60"), up("1x60")]
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [*steady, api("jotc_schema_reader_reports_failed_total", "0x10 0+2x50")],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "25m", {}),
                    *expect(rules, "40m", {"JotcSchemaReportsFailing": ({}, "20")}),
                ],
            },
            {
                "interval": "1m",
                "input_series": [*steady, api("jotc_schema_reader_reports_failed_total", "0x10 1x50")],
                "alert_rule_test": lambda rules: [*expect(rules, "15m", {}), *expect(rules, "40m", {})],
            },
        ],
        tmp_path,
    )


def test_errors_and_a_latency_regression_burn_their_budgets_fast(tmp_path: Path) -> None:
    """From 30m: 60 of 660 answers a minute are 503 (9 %, 91 times the 0.1 % budget) in one run; every
    answer takes longer than 0.25 s (100 times the 1 % budget) in the other."""
    steady = [*replicas("2x60", "2x60"), up("1x60")]
    run(
        "default",
        [
            {
                "interval": "1m",
                "input_series": [
                    jumps("201", "0+600x60"),
                    jumps("503", "0x30 0+60x30"),
                    *durations("0+660x60", "0+660x60"),
                    *steady,
                ],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "30m", {}),
                    *expect(
                        rules,
                        "40m",
                        {
                            "JotcApiAvailabilityBudgetBurnFast": ({}, "2.2%"),
                            "JotcApiAvailabilityBudgetBurnSlow": ({}, "2.2%"),
                        },
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [jumps("201", "0+600x60"), *durations("0+600x30 18000x30", "0+600x60"), *steady],
                "alert_rule_test": lambda rules: [
                    *expect(rules, "30m", {}),
                    *expect(
                        rules,
                        "40m",
                        {"JotcApiLatencyBudgetBurnFast": ({}, "25%"), "JotcApiLatencyBudgetBurnSlow": ({}, "25%")},
                    ),
                ],
            },
        ],
        tmp_path,
    )


def test_a_slow_burn_opens_a_ticket_and_pages_nobody(tmp_path: Path) -> None:
    """For 8 hours, every 5 minutes: 0.2 % of answers 503 (twice the availability budget) and 2 % slower
    than 0.25 s (twice the latency budget): a ticket each (the budget rate passed over 3 days and 6 hours), no page."""
    run(
        "default",
        [
            {
                "interval": "5m",
                "input_series": [
                    jumps("201", "0+4990x100"),
                    jumps("503", "0+10x100"),
                    *durations("0+4900x100", "0+5000x100"),
                    *replicas("2x100", "2x100"),
                    up("1x100"),
                ],
                "alert_rule_test": lambda rules: [
                    *expect(
                        rules,
                        "8h",
                        {"JotcApiAvailabilityBudgetBurnSlow": ({}, "0.2%"), "JotcApiLatencyBudgetBurnSlow": ({}, "2%")},
                    ),
                ],
            }
        ],
        tmp_path,
    )


def test_a_healthy_api_is_quiet_at_the_ingress_and_at_the_api(tmp_path: Path) -> None:
    traffic = [
        ingress("201", "0+600x120"),
        *ingress_durations("0+597x120", "0+600x120"),
        jumps("201", "0+600x120"),
        jumps("503", "0+0.3x120"),  # 0.05 %: within the 0.1 % budget
        *durations("0+597x120", "0+600x120"),  # 0.5 % slow: within the 1 % budget
        *replicas("2x120", "2x120"),
        up("1x120"),
    ]
    for values in ("default", "production-values"):
        test = {"interval": "1m", "input_series": traffic, "alert_rule_test": lambda rules: expect(rules, "2h", {})}
        run(values, [test], tmp_path)


# --- what every alert carries ---------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lowercase, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


AGGREGATION = re.compile(
    r"\b(sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*"
    r"(?:(by|without)\s*\(([^)]*)\))?\s*\("
)


def aggregations_losing_the_release(expression: str, namespace_labels: set[str]) -> list[str]:
    """Each aggregation in a PromQL expression that drops the labels Alertmanager routes on: one
    without `by (...)` naming namespace (or the ingress's namespace label), one by labels without
    job over the API's own series, or one `without` namespace or job."""
    found = []
    for match in AGGREGATION.finditer(expression):
        _, clause, labels = match.groups()
        names = {label.strip() for label in (labels or "").split(",")}
        if clause == "without":
            lost = bool(names & {"namespace", "job"})
        else:
            over_ingress = "nginx_ingress_controller_" in expression[match.end() : match.end() + 80]
            lost = clause is None or not names & namespace_labels or ("job" not in names and not over_ingress)
        if lost:
            found.append(match.group(0))
    return found


def test_the_aggregation_check_catches_what_it_is_for() -> None:
    labels = {"namespace", "exported_namespace"}
    assert aggregations_losing_the_release("sum(rate(jotc_http_requests_total[5m]))", labels)
    assert aggregations_losing_the_release("sum by (le) (rate(x[5m]))", labels)
    assert aggregations_losing_the_release("sum without (job) (rate(x[5m]))", labels)
    assert aggregations_losing_the_release("max by (namespace) (jotc_x)", labels)
    assert not aggregations_losing_the_release("sum by (namespace, job, service) (rate(x[5m]))", labels)
    assert not aggregations_losing_the_release(
        'sum by (exported_namespace, service) (rate(nginx_ingress_controller_requests{status=~"5.."}[5m]))', labels
    )


@pytest.mark.parametrize("values", ["default", "production-values"])
def test_every_alert_keeps_the_release_labels_and_has_a_runbook_section(values: str) -> None:
    docs = rendered_rules(values)
    anchors = github_anchors(RUNBOOK.read_text())
    namespace_labels = {"namespace", "exported_namespace"}
    for rule in rules(docs):
        where = rule.get("alert") or rule["record"]
        assert aggregations_losing_the_release(rule["expr"], namespace_labels) == [], where
    for name, alert in alerts(docs).items():
        labels, annotations = alert["labels"], alert["annotations"]
        assert {key: labels.get(key) for key in RELEASE_LABELS} == RELEASE_LABELS, name
        assert labels["severity"] == severity(name), name
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == "docs/runbook.md", (name, annotations["runbook_url"])
        assert anchor == name.lower(), (name, annotations["runbook_url"])
        assert anchor in anchors, f"{name}: docs/runbook.md has no section #{anchor}"
        missing = runbook_section_parts_missing(name)
        assert missing == [], f"docs/runbook.md, section {name}, lacks {missing}"


RUNBOOK_PARTS = ("**Means**", "**Confirm**", "**Do**", "**Over when**")


def runbook_section_parts_missing(alert: str) -> list[str]:
    """The parts an alert's runbook section lacks: what it means, how to confirm it, what to do,
    how to know it is over."""
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.M)
    section = next((text for text in sections if text.split("\n", 1)[0].strip() == alert), "")
    return [part for part in RUNBOOK_PARTS if part not in section]


def test_the_runbook_parts_check_catches_a_missing_part() -> None:
    assert runbook_section_parts_missing("JotcApiUnavailable") == []
    assert runbook_section_parts_missing("NoSuchAlert") == list(RUNBOOK_PARTS)


def test_the_runbook_url_and_severities_are_values() -> None:
    docs = rendered_rules(
        "default",
        "--set",
        "api.prometheusRule.runbookUrl=https://example.com/jotc/runbook.md,api.prometheusRule.severities.page=critical",
    )
    unavailable = alerts(docs)["JotcApiUnavailable"]
    assert unavailable["annotations"]["runbook_url"] == "https://example.com/jotc/runbook.md#jotcapiunavailable"
    assert unavailable["labels"]["severity"] == "critical"


def test_slos_measured_at_an_ingress_the_chart_does_not_have_are_refused() -> None:
    result = run_helm(
        "template", "rel", str(CHART), "--set", "api.prometheusRule.enabled=true,api.prometheusRule.slo.source=ingress"
    )
    assert result.returncode != 0
    assert "slo.source is ingress but api.ingress.enabled is false" in result.stderr


def test_the_notes_warn_while_the_runbook_url_is_not_one_alertmanager_can_open() -> None:
    def notes(runbook: str) -> str:
        rule = f"api.prometheusRule.enabled=true,api.prometheusRule.runbookUrl={runbook}"
        result = run_helm("install", "--dry-run", "rel", str(CHART), "--set", rule)
        assert result.returncode == 0, result.stderr
        return result.stdout

    warning = "WARNING: the alerts' runbook_url is"
    assert f"{warning} docs/runbook.md#<alert>" in notes("docs/runbook.md")
    assert warning not in notes("https://example.com/jotc/blob/v1/docs/runbook.md")
