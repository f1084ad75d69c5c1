"""Read `kubectl get pods -o json` on stdin; print each pod's phase and restarts; exit 1 naming every
pod that is not settled: not Running or Succeeded, restarted, a container waiting (CrashLoopBackOff,
ImagePullBackOff), or a Locust pod not Succeeded (a headless swarm ends). .github/workflows/ci.yml runs
it after its installs and upgrades."""

import json
import sys

bad = []
for pod in json.load(sys.stdin)["items"]:
    name, phase = pod["metadata"]["name"], pod["status"]["phase"]
    statuses = pod["status"].get("containerStatuses", [])
    restarts = sum(status["restartCount"] for status in statuses)
    waiting = [status["state"]["waiting"]["reason"] for status in statuses if "waiting" in status["state"]]
    locust = "locust" in name
    if phase not in ("Running", "Succeeded") or restarts or waiting or (locust and phase != "Succeeded"):
        bad.append(f"{name}: {phase}, {restarts} restarts, waiting {waiting}")
    print(f"{name}: {phase}, {restarts} restarts")
sys.exit("\n".join(bad) or None)
