"""The chart's Locust swarm, rendered: the web UI's login (no UI without one unless opened on
purpose), who holds which token (the workers alone send requests), the default target through the
ingress controller's Service with the ingress host's name, TLS checks, bounded connection reuse, and
the load-test token the API counts each Locust user by."""

from __future__ import annotations

from typing import Any

import pytest
from chart import CHART, find, invalid_on, one, render, run_helm

SWARM = ("--set", "locust.enabled=true,locust.web.existingSecret=jotc-locust-web")
INGRESS = ("--set", "api.ingress.enabled=true,api.ingress.host=jotc.example.com")
TLS = ("--set", "api.ingress.tlsSecretName=jotc-example-com-tls")
HEADLESS = ("--set", "locust.mode=headless")


def refused(*args: str) -> str:
    """helm's message for a render that must fail."""
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode != 0, "rendered, but should have been refused"
    return result.stderr


def locust_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod spec of each Locust workload, by its component (locust-master, locust-worker)."""
    pods = {}
    for doc in docs:
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component", "")
        if component.startswith("locust") and doc["kind"] in {"Deployment", "Job"}:
            assert component not in pods, f"two workloads for {component}"
            pods[component] = doc["spec"]["template"]["spec"]
    assert set(pods) == {"locust-master", "locust-worker"}, sorted(pods)
    return pods


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    """The container's variables: a value, or where it comes from (valueFrom)."""
    (container,) = pod["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def api_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return env_of({"containers": [one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]]})


# --- The web UI's login -----------------------------------------------------------------------------


def test_the_ui_refuses_to_render_without_a_login() -> None:
    message = refused("--set", "locust.enabled=true")
    assert "locust.web.existingSecret" in message, message
    assert "locust.web.open=true" in message, message
    # A headless swarm serves no UI and needs none.
    locust_pods(render("default", "--set", "locust.enabled=true", *HEADLESS))


def test_the_login_comes_from_the_secret_to_the_master_alone() -> None:
    pods = locust_pods(render("default", *SWARM))
    master = env_of(pods["locust-master"])
    assert master["JOTC_LT_WEB_USERNAME"] == {"secretKeyRef": {"name": "jotc-locust-web", "key": "username"}}
    assert master["JOTC_LT_WEB_PASSWORD"] == {"secretKeyRef": {"name": "jotc-locust-web", "key": "password"}}
    assert not [name for name in env_of(pods["locust-worker"]) if name.startswith("JOTC_LT_WEB_")]


def test_an_open_ui_is_only_on_request() -> None:
    pods = locust_pods(render("default", "--set", "locust.enabled=true,locust.web.open=true"))
    assert not [name for pod in pods.values() for name in env_of(pod) if name.startswith("JOTC_LT_WEB_")]
    message = refused(*SWARM, "--set", "locust.web.open=true")
    assert "set one of them" in message, message


# --- Tokens: the workers send the requests, the master none --------------------------------------------


def test_only_the_workers_hold_the_admin_token_and_only_for_the_admin_scenario() -> None:
    admin = ("--set", "adminToken.existingSecret=jotc-admin")
    for mode in (("--set", "locust.mode=ui"), HEADLESS):
        without = locust_pods(render("default", *SWARM, *admin, *mode))
        assert not [pod for pod in without.values() if "JOTC_ADMIN_TOKEN" in env_of(pod)]
        with_scenario = locust_pods(render("default", *SWARM, *admin, *mode, "--set", "locust.adminScenario=true"))
        assert env_of(with_scenario["locust-worker"])["JOTC_ADMIN_TOKEN"] == {
            "secretKeyRef": {"name": "jotc-admin", "key": "token"}
        }
        assert "JOTC_ADMIN_TOKEN" not in env_of(with_scenario["locust-master"])


def test_the_admin_scenario_through_the_ingress_needs_admin_routed() -> None:
    admin = ("--set", "adminToken.existingSecret=jotc-admin,locust.adminScenario=true")
    assert "api.ingress.exposeAdmin=true" in refused(*SWARM, *INGRESS, *admin)
    locust_pods(render("default", *SWARM, *INGRESS, *admin, "--set", "api.ingress.exposeAdmin=true"))
    locust_pods(render("default", *SWARM, *admin))  # the API Service has /admin


def test_the_load_test_token_goes_to_the_api_and_the_workers_while_the_swarm_runs() -> None:
    token = ("--set", "locust.loadTestToken.existingSecret=jotc-loadtest")
    expected = {"secretKeyRef": {"name": "jotc-loadtest", "key": "token"}}
    docs = render("default", *SWARM, *token)
    pods = locust_pods(docs)
    assert env_of(pods["locust-worker"])["JOTC_LOADTEST_TOKEN"] == expected
    assert "JOTC_LOADTEST_TOKEN" not in env_of(pods["locust-master"])
    assert api_env(docs)["JOTC_LOADTEST_TOKEN"] == expected
    # No swarm, no token: the API counts every request by its address.
    assert "JOTC_LOADTEST_TOKEN" not in api_env(render("default", *token))
    assert "JOTC_LOADTEST_TOKEN" not in api_env(render("default", *SWARM))


def test_the_token_cannot_be_given_as_a_plain_api_setting() -> None:
    assert "values don't meet" in refused("--set", "api.settings.JOTC_LOADTEST_TOKEN=plain").lower()


def test_locust_pods_run_as_the_charts_service_account_without_its_token() -> None:
    for pod in locust_pods(render("default", *SWARM)).values():
        assert pod["serviceAccountName"] == "rel-jotc"
        assert pod["automountServiceAccountToken"] is False


# --- The target ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "target", "connect_to"),
    [
        ((), "http://rel-jotc-api:4000", None),
        (INGRESS, "http://jotc.example.com", "ingress-nginx-controller.ingress-nginx.svc:80"),
        ((*INGRESS, *TLS), "https://jotc.example.com", "ingress-nginx-controller.ingress-nginx.svc:443"),
        (
            (*INGRESS, *TLS, "--set", "locust.ingressService=traefik.kube-system.svc:8443"),
            "https://jotc.example.com",
            "traefik.kube-system.svc:8443",
        ),
        (
            (*INGRESS, *TLS, "--set", "locust.target=https://elsewhere.example.com"),
            "https://elsewhere.example.com",
            None,
        ),
    ],
)
def test_the_swarm_goes_through_the_ingress_controller_when_there_is_one(
    extra: tuple[str, ...], target: str, connect_to: str | None
) -> None:
    pods = locust_pods(render("default", *SWARM, *extra))
    master, worker = env_of(pods["locust-master"]), env_of(pods["locust-worker"])
    # Both: the master hands its host to the workers when a run starts.
    assert master["JOTC_TARGET"] == worker["JOTC_TARGET"] == target
    assert worker.get("JOTC_LT_CONNECT_TO") == connect_to
    assert "JOTC_LT_CONNECT_TO" not in master


def worker_egress_ports(docs: list[dict[str, Any]]) -> set[int]:
    """The TCP ports the workers' NetworkPolicy opens besides DNS and the master's 5557."""
    egress = one(docs, "NetworkPolicy", "-locust-worker")["spec"]["egress"]
    ports = {port["port"] for rule in egress for port in rule.get("ports", []) if port["protocol"] == "TCP"}
    return ports - {53, 5557}


@pytest.mark.parametrize(
    ("extra", "ports"),
    [
        ((*INGRESS, *TLS), {443}),
        # Traefik's pods listen on 8443 and 8000 behind its Service's 443 and 80: a policy sees those.
        (
            (*INGRESS, *TLS, "--set", "locust.ingressService=traefik.kube-system.svc,locust.ingressTargetPort=8443"),
            {8443},
        ),
        ((*INGRESS, "--set", "locust.ingressService=traefik.kube-system.svc,locust.ingressTargetPort=8000"), {8000}),
        (("--set", "locust.target=https://jotc.example.com,locust.ingressTargetPort=8443"), {8443}),
        (("--set", "locust.target=https://elsewhere.example.com:9443"), {9443}),
        # Without the ingress the workers reach the API's pods on their own port.
        (("--set", "locust.ingressTargetPort=8443"), {4000}),
    ],
)
def test_the_workers_may_reach_the_port_the_pods_behind_the_target_listen_on(
    extra: tuple[str, ...], ports: set[int]
) -> None:
    assert worker_egress_ports(render("default", *SWARM, *extra)) == ports


def test_certificates_are_checked_unless_told_otherwise() -> None:
    worker = env_of(locust_pods(render("default", *SWARM, *INGRESS, *TLS))["locust-worker"])
    assert worker["JOTC_LT_TLS_VERIFY"] == "true"
    assert "JOTC_LT_CA_FILE" not in worker
    unchecked = locust_pods(render("default", *SWARM, *INGRESS, *TLS, "--set", "locust.tls.verify=false"))
    assert env_of(unchecked["locust-worker"])["JOTC_LT_TLS_VERIFY"] == "false"


def test_a_private_ca_is_mounted_on_the_workers() -> None:
    pods = locust_pods(render("default", *SWARM, *INGRESS, *TLS, "--set", "locust.tls.caSecret=jotc-ca"))
    worker = pods["locust-worker"]
    assert env_of(worker)["JOTC_LT_CA_FILE"] == "/target-ca/ca.crt"
    volume = next(v for v in worker["volumes"] if v["name"] == "target-ca")
    assert volume["secret"] == {"secretName": "jotc-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    (mount,) = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "target-ca"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/target-ca", True)
    assert not [v for v in pods["locust-master"]["volumes"] if v["name"] == "target-ca"]


def test_connections_are_reopened_as_the_values_say() -> None:
    for extra in ((), HEADLESS):
        worker = env_of(locust_pods(render("default", *SWARM, *extra))["locust-worker"])
        assert (worker["JOTC_LT_CONNECTION_REQUESTS"], worker["JOTC_LT_CONNECTION_SECONDS"]) == ("100", "30")
    shorter = ("--set", "locust.connections.maxRequests=20,locust.connections.maxSeconds=5")
    worker = env_of(locust_pods(render("default", *SWARM, *shorter))["locust-worker"])
    assert (worker["JOTC_LT_CONNECTION_REQUESTS"], worker["JOTC_LT_CONNECTION_SECONDS"]) == ("20", "5")


@pytest.mark.parametrize(
    "bad",
    [
        "locust.web.open=yes",
        "locust.web.password=secret",
        "locust.connections.maxRequests=0",
        "locust.connections.maxSeconds=0",
        "locust.tls.verify=no",
        "locust.ingressService=https://ingress",
        "locust.ingressTargetPort=-1",
        "locust.ingressTargetPort=65536",
        "locust.loadTestToken.value=plain",
    ],
)
def test_wrong_locust_values_are_rejected_by_the_schema(bad: str) -> None:
    assert "values don't meet" in refused(*SWARM, "--set", bad).lower()


def test_every_locust_manifest_is_valid_kubernetes() -> None:
    everything = (
        *SWARM,
        *INGRESS,
        *TLS,
        "--set",
        "locust.tls.caSecret=jotc-ca,locust.loadTestToken.existingSecret=jotc-loadtest",
        "--set",
        "adminToken.existingSecret=jotc-admin,locust.adminScenario=true,api.ingress.exposeAdmin=true",
    )
    for mode in (("--set", "locust.mode=ui"), HEADLESS):
        docs = [d for d in render("default", *everything, *mode) if "locust" in d["metadata"]["name"]]
        assert find(docs, "Service", "locust-master")
        for minor in (30, 35):
            assert not invalid_on(minor, docs), invalid_on(minor, docs)
