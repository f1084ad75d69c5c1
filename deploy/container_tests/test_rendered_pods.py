"""The Helm chart's pods, taken from `helm template` and run in the real engine (pods.py says how).

One release is rendered with ci/evaluation-values.yaml and rendered-values.yaml (the images built
from this checkout, the chart's PgBouncer, a short headless Locust run): the evaluation PostgreSQL
and Redis, PgBouncer before them, the migration Job (straight to PostgreSQL), the API pod (after
its init container waited for the schema; both through PgBouncer), the `helm test` pod, and a
headless Locust master with one worker that loads the ConfigMap's locustfile. A chart change that
stops one of these pods from starting, or a Job from finishing, fails here.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from common import run
from engine import Engine
from pods import Cluster, Kubelet, Manifest, Pod
from stage import REPORT, ROOT

CHART = ROOT / "deploy/helm/jotc"
VALUES = [CHART / "ci/evaluation-values.yaml", Path(__file__).with_name("rendered-values.yaml")]
RELEASE = "rel"
NAMESPACE = "jotc"


def helm() -> str:
    found = shutil.which("helm") or str(ROOT / ".tools/helm/helm")
    if Path(found).exists():
        return found
    # scripts/test installs helm for the deploy suite; alone, the container stage installs it the same way.
    directory = run("python3", str(ROOT / "scripts/lib/tools.py"), "helm", timeout=600).stdout.strip().splitlines()[-1]
    return str(Path(directory) / "helm")


def render(token: str, postgres: str, redis: str) -> list[Manifest]:
    files = [arg for path in VALUES for arg in ("-f", str(path))]
    result = subprocess.run(
        [
            helm(),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *files,
            # The evaluation convenience path: the chart stores what it is given in its Secrets.
            "--set",
            f"evaluation.existingSecret=,evaluation.postgresql.password={postgres},evaluation.redis.password={redis}",
            "--set",
            f"adminToken.value={token}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def workload(manifests: list[Manifest], kind: str, name_part: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and name_part in m["metadata"]["name"]]
    assert len(found) == 1, [m["metadata"]["name"] for m in found]
    return found[0]


def pod_of(manifest: Manifest) -> tuple[str, Manifest, dict[str, str]]:
    """The pod a workload makes (name, spec, labels); a bare Pod is its own."""
    if manifest["kind"] == "Pod":
        return manifest["metadata"]["name"], manifest["spec"], manifest["metadata"].get("labels") or {}
    template = manifest["spec"]["template"]
    return manifest["metadata"]["name"], template["spec"], template["metadata"].get("labels") or {}


class Release:
    """The rendered release, its pods as they were started, and the admin token it was given."""

    def __init__(self, manifests: list[Manifest], kubelet: Kubelet, token: str) -> None:
        self.manifests = manifests
        self.kubelet = kubelet
        self.token = token
        self.pods: dict[str, Pod] = {}
        self.exit_codes: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def start(self, kind: str, name_part: str) -> Pod:
        manifest = workload(self.manifests, kind, name_part)
        name, spec, labels = pod_of(manifest)
        claims = tuple(claim["metadata"]["name"] for claim in manifest["spec"].get("volumeClaimTemplates") or [])
        started = time.monotonic()
        pod = self.kubelet.start(name, spec, labels, claims)
        self.timings[f"{name} started"] = time.monotonic() - started
        self.pods[name_part] = pod
        return pod

    def finish(self, name_part: str, timeout: float) -> int:
        pod = self.pods[name_part]
        (container,) = pod.containers.values()
        started = time.monotonic()
        code = self.kubelet.wait(container, timeout=timeout)
        self.timings[f"{pod.name} finished"] = time.monotonic() - started
        self.exit_codes[name_part] = code
        return code

    def logs(self, name_part: str) -> str:
        return "\n".join(self.kubelet.logs(c) for c in self.pods[name_part].containers.values())


@pytest.fixture(scope="module")
def release(engine: Engine, built: None) -> Iterator[Release]:
    """Render with the images built from this checkout, and run the release's pods in the order a
    cluster would settle them; everything is removed afterwards."""
    token, postgres, redis = (secrets.token_hex(20) for _ in range(3))
    manifests = render(token, postgres, redis)
    run_id = f"jotc-rendered-{os.getpid()}"
    scratch = Path(tempfile.mkdtemp(prefix="jotc-rendered-"))
    kubelet = Kubelet(docker=engine.cli, cluster=Cluster(manifests), run_id=run_id, scratch=scratch)
    rendered = Release(manifests, kubelet, token)
    started = time.monotonic()
    try:
        postgres_pod = rendered.start("StatefulSet", "-postgresql")
        redis_pod = rendered.start("StatefulSet", "-redis")
        rendered.timings["PostgreSQL ready"] = kubelet.wait_ready(postgres_pod, "postgresql")
        rendered.timings["Redis ready"] = kubelet.wait_ready(redis_pod, "redis")
        pgbouncer = rendered.start("Deployment", "-pgbouncer")
        rendered.timings["PgBouncer ready"] = kubelet.wait_ready(pgbouncer, "pgbouncer")
        rendered.start("Job", "-migrate-")  # the API's init container waits for it, as in a cluster
        api = rendered.start("Deployment", "-api")
        rendered.timings["API ready"] = kubelet.wait_ready(api, "api")
        assert rendered.finish("-migrate-", timeout=120) == 0, rendered.logs("-migrate-")
        rendered.start("Pod", "-test-jumps")
        rendered.finish("-test-jumps", timeout=120)
        rendered.start("Job", "locust-master")
        rendered.start("Job", "locust-worker")
        rendered.finish("locust-master", timeout=300)
        rendered.finish("locust-worker", timeout=120)
        yield rendered
    finally:
        REPORT["timings"].append(f"rendered pods: whole release {time.monotonic() - started:.0f} s")
        REPORT["engine"].extend(f"rendered pods: {note}" for note in kubelet.notes)
        left = kubelet.remove_all()
        assert left == {}, f"left in the engine: {left}"


def test_the_migration_job_exits_zero_and_the_api_became_ready(release: Release) -> None:
    assert release.exit_codes["-migrate-"] == 0
    api = release.pods["-api"]
    assert "api" in api.containers
    # Ready at all (the release fails after wait_ready's 180 s otherwise); how soon is the engine's load.
    assert "API ready" in release.timings


def test_the_helm_test_pod_exits_zero_and_records_nothing(engine: Engine, release: Release) -> None:
    """The release's helm test proves the public route through the Service with a refused input,
    so running it against production leaves no row behind."""
    assert release.exit_codes["-test-jumps"] == 0, release.logs("-test-jumps")
    assert "POST /jumps refused an unreachable input" in release.logs("-test-jumps")
    assert "GET /readyz" in release.logs("-test-jumps")
    postgres = release.pods["-postgresql"].containers["postgresql"]
    query = "SELECT count(*) FROM jump_requests WHERE user_name = 'helm-test'"
    rows = run(engine.cli, "exec", postgres, "psql", "-U", "jotc", "-d", "jotc", "-Atc", query).stdout.strip()
    assert rows == "0", "helm test recorded a request"


def test_the_headless_run_ends_with_its_workers(release: Release) -> None:
    """The master meets its gates and exits 0; the worker is told to quit and exits 0 too, so its
    Job completes instead of restarting it."""
    master = release.logs("locust-master")
    assert release.exit_codes["locust-master"] == 0, master[-4000:]
    assert "objective" in master.lower(), master[-4000:]
    assert release.exit_codes["locust-worker"] == 0, release.logs("locust-worker")[-4000:]
    worker = workload(release.manifests, "Job", "locust-worker")["spec"]["template"]["spec"]
    assert worker["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert env["LOCUST_LOCUSTFILE"] == "/locustfile/locustfile.py"


def test_the_rendered_secrets_reach_the_api(release: Release) -> None:
    """The admin token the chart stored in its Secret is the one the API checks; the helm test's
    request was recorded (evaluation PostgreSQL through the URL composed from its password)."""
    url = f"http://{release.kubelet.address(release.pods['-api'])}:4000/admin/stats"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {release.token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["total_requests"] >= 1
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401


def test_the_api_container_runs_as_rendered(engine: Engine, release: Release) -> None:
    container = release.pods["-api"].containers["api"]
    assert run(engine.cli, "exec", container, "id", "-u").stdout.strip() == "10001"
    write = run(engine.cli, "exec", container, "touch", "/written", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    inspected = run(
        engine.cli, "inspect", "--format", "{{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}}", container
    )
    assert inspected.stdout.split()[0] == '["ALL"]'
    assert "no-new-privileges" in inspected.stdout
    assert run(engine.cli, "exec", container, "touch", "/tmp/written").returncode == 0  # the emptyDir


def exported(metrics: str) -> set[str]:
    return set(re.findall(r"^(jotc_\w+?)(?:\{| )", metrics, re.M))


def test_the_dashboards_metrics_are_served_after_the_load(release: Release) -> None:
    """Every metric the chart's dashboard charts is on /metrics once traffic has passed (Redis
    failures and 429s appear only when they happen)."""
    dashboard: Any = (CHART / "dashboards/jotc-api.json").read_text()
    charted = set(re.findall(r"\b(jotc_\w+)", dashboard))
    metrics = httpx.get(f"http://{release.kubelet.address(release.pods['-api'])}:4000/metrics", timeout=10).text
    missing = charted - exported(metrics) - {"jotc_redis_failures_total", "jotc_rate_limited_total"}
    assert missing == set(), sorted(exported(metrics))


def test_the_api_reaches_postgresql_only_through_the_rendered_pgbouncer(engine: Engine, release: Release) -> None:
    """A request recorded through PgBouncer: the API's DATABASE_URL names PgBouncer's Service, the
    POST is stored and read back, and every connection PostgreSQL holds for the database comes from
    the PgBouncer pod (the migration's direct one ended with its Job)."""
    api = release.pods["-api"]
    url = run(engine.cli, "exec", api.containers["api"], "printenv", "DATABASE_URL").stdout.strip()
    assert re.search(r"@rel-jotc-pgbouncer:6432/jotc$", url), url
    base = f"http://{release.kubelet.address(api)}:4000"
    game = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "through-pgbouncer@example.com"}
    created = httpx.post(f"{base}/jumps", json=game, timeout=10)
    assert created.status_code == 201, created.text
    assert httpx.get(base + created.headers["location"], timeout=10).json()["id"] == created.json()["id"]
    postgres = release.pods["-postgresql"].containers["postgresql"]
    query = (
        "SELECT DISTINCT host(client_addr) FROM pg_stat_activity"
        " WHERE datname = 'jotc' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    clients = run(engine.cli, "exec", postgres, "psql", "-U", "jotc", "-d", "jotc", "-Atc", query).stdout.split()
    assert clients == [release.kubelet.address(release.pods["-pgbouncer"])], clients
