"""Kubernetes pod specs, as `helm template` renders them, run as containers in a Docker engine.

What a kubelet would do, as far as one engine can: every container runs with its rendered image,
command and args (`$(VAR)` expanded as Kubernetes does), environment (values, Secret and ConfigMap
references resolved from the rendered objects or from Secrets the caller stands in for), user and
group, read-only root, dropped capabilities, no privilege escalation and memory/CPU limits. A pod
is a pause container holding the network namespace, with the names of the Services that select it
as network aliases, so in-cluster names resolve; its containers join that namespace. emptyDir
volumes and volume claims are tmpfs-backed volumes (shared by the pod's containers), ConfigMap
volumes read-only bind mounts of the rendered files. Init containers run one after the other and
must exit 0 before the main containers start. Readiness is the rendered readinessProbe.

Not emulated: restarts, probes other than readiness, Service ports that differ from the target
port (refused), scheduling, NetworkPolicy. Everything made carries a label naming the run, so
`remove_all` finds it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import run
from standins import LABEL as STANDIN_LABEL

Manifest = dict[str, Any]
REFERENCE = re.compile(r"\$\$|\$\((\w+)\)")
RUN_LABEL = "org.jotc.rendered-run"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variables: $(NAME) becomes NAME's value when defined, $$ a dollar."""
    return REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def quantity_megabytes(quantity: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1 / 1000 / 1.048576, "M": 1 / 1.048576, "G": 1000 / 1.048576}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"memory quantity {quantity!r}"
    return max(1, int(int(match.group(1)) * units.get(match.group(2) or "", 1 / 1024 / 1024)))


def quantity_cpus(quantity: str | float) -> str:
    text = str(quantity)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


@dataclass
class Cluster:
    """What a cluster gives the pods: Secrets and ConfigMaps by name, Services by selector."""

    manifests: list[Manifest]
    existing_secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def secret(self, name: str) -> dict[str, str]:
        if name in self.existing_secrets:
            return self.existing_secrets[name]
        for secret in self.of_kind("Secret"):
            if secret["metadata"]["name"] == name:
                data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
                return {**data, **(secret.get("stringData") or {})}
        raise AssertionError(f"Secret {name} is neither rendered nor provided: the pod would not start")

    def config_map(self, name: str) -> dict[str, str]:
        for config in self.of_kind("ConfigMap"):
            if config["metadata"]["name"] == name:
                return dict(config.get("data") or {})
        raise AssertionError(f"ConfigMap {name} is not rendered: the pod would not start")

    def services_selecting(self, labels: dict[str, str]) -> list[str]:
        names = []
        for service in self.of_kind("Service"):
            selector = service["spec"].get("selector") or {}
            if selector and all(labels.get(key) == value for key, value in selector.items()):
                for port in service["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    assert target == port["port"] or isinstance(target, str), (
                        f"Service {service['metadata']['name']}: port {port['port']} -> {target} cannot be an alias"
                    )
                names.append(service["metadata"]["name"])
        return names

    def environment(self, container: Manifest) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.config_map(source["configMapRef"]["name"])
            else:
                data = self.secret(source["secretRef"]["name"])
            env.update({prefix + key: value for key, value in data.items()})
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = expand(str(variable["value"]), env)
                continue
            reference = variable["valueFrom"]
            if "secretKeyRef" in reference:
                ref = reference["secretKeyRef"]
                env[variable["name"]] = self.secret(ref["name"])[ref["key"]]
            elif "configMapKeyRef" in reference:
                ref = reference["configMapKeyRef"]
                env[variable["name"]] = self.config_map(ref["name"])[ref["key"]]
            else:
                raise AssertionError(f"valueFrom {reference} is not emulated")
        return env


@dataclass
class Pod:
    name: str
    pause: str
    containers: dict[str, str]
    spec: Manifest


@dataclass
class Kubelet:
    """Runs pods in one Docker network; `notes` says where it departed from the rendered spec."""

    docker: str
    cluster: Cluster
    run_id: str
    scratch: Path
    network: str = ""
    notes: list[str] = field(default_factory=list)
    passwd: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network = f"{self.run_id}-net"
        run(self.docker, "network", "create", "--label", f"{RUN_LABEL}={self.run_id}", self.network)

    def docker_run(self, *args: str, detach: bool = True, timeout: float = 600) -> str:
        mode = ["-d"] if detach else []
        result = run(self.docker, "run", *mode, "--label", f"{RUN_LABEL}={self.run_id}", *args, timeout=timeout)
        return result.stdout.strip()

    # --- a pod ---------------------------------------------------------------------------------

    def start(self, name: str, spec: Manifest, labels: dict[str, str], claims: tuple[str, ...] = ()) -> Pod:
        """Create the pod's namespace and volumes, run its init containers to completion (each must
        exit 0), then start its containers."""
        first_image = spec["containers"][0]["image"]
        aliases = [arg for service in self.cluster.services_selecting(labels) for arg in ("--network-alias", service)]
        pause = f"{self.run_id}-{name}"
        self.docker_run(
            "--name",
            pause,
            "--hostname",
            name[:63],
            "--network",
            self.network,
            *aliases,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "65534:65534",
            "--entrypoint",
            "sleep",
            first_image,
            "infinity",
        )
        volumes = self.volumes(name, spec, claims)
        pod = Pod(name=name, pause=pause, containers={}, spec=spec)
        for container in spec.get("initContainers") or []:
            started = time.monotonic()
            cid = self.container(pod, container, volumes, detach=True)
            code = self.wait(cid, timeout=600)
            assert code == 0, f"init container {container['name']} of {name} exited {code}:\n{self.logs(cid)}"
            self.notes.append(
                f"{name}: init container {container['name']} exited 0 after {time.monotonic() - started:.0f} s"
            )
        for container in spec["containers"]:
            pod.containers[container["name"]] = self.container(pod, container, volumes, detach=True)
        return pod

    def volumes(self, pod: str, spec: Manifest, claims: tuple[str, ...]) -> dict[str, list[str]]:
        """Each volume as `--mount` arguments (without the target)."""
        made: dict[str, list[str]] = {}
        for volume in [*(spec.get("volumes") or []), *({"name": claim, "emptyDir": {}} for claim in claims)]:
            if "emptyDir" in volume:
                size = (volume["emptyDir"] or {}).get("sizeLimit")
                options = "mode=1777" + (f",size={quantity_megabytes(size)}m" if size else "")
                name = f"{self.run_id}-{pod}-{volume['name']}"
                run(
                    self.docker,
                    "volume",
                    "create",
                    "--label",
                    f"{RUN_LABEL}={self.run_id}",
                    "--driver",
                    "local",
                    "--opt",
                    "type=tmpfs",
                    "--opt",
                    "device=tmpfs",
                    "--opt",
                    f"o={options}",
                    name,
                )
                made[volume["name"]] = [f"type=volume,src={name}"]
            elif "configMap" in volume:
                files = Path(tempfile.mkdtemp(prefix=f"{pod}-{volume['name']}-", dir=self.scratch))
                files.chmod(0o755)
                for key, text in self.cluster.config_map(volume["configMap"]["name"]).items():
                    (files / key).write_text(text)
                    (files / key).chmod(0o644)
                made[volume["name"]] = [f"type=bind,src={files}", "readonly"]
            else:
                raise AssertionError(f"volume {volume} of {pod} is not emulated")
        return made

    def user_of(self, image: str, container: str, uid: int, gid: int) -> tuple[int, int]:
        """The rendered user, unless the image is a local stand-in for an official image that has
        no such user (PostgreSQL refuses to run as a uid without a name): then the stand-in's own
        user of the same name, said in the notes."""
        labels = json.loads(run(self.docker, "image", "inspect", image, "--format", "{{json .Config.Labels}}").stdout)
        if not (labels or {}).get(STANDIN_LABEL):
            return uid, gid
        if image not in self.passwd:
            text = run(self.docker, "run", "--rm", "--entrypoint", "cat", image, "/etc/passwd").stdout
            fields = [line.split(":") for line in text.splitlines() if line.count(":") >= 6]
            self.passwd[image] = {int(f[2]): (f[0], int(f[3])) for f in fields}
        users = self.passwd[image]
        if uid in users:
            return uid, gid
        named = [(u, name, g) for u, (name, g) in users.items() if container.startswith(name)]  # postgresql
        if not named:
            return uid, gid
        own, name, group = named[0]
        self.notes.append(
            f"{container}: {image} is a local stand-in without uid {uid}; ran as its own user {name} ({own}), "
            f"everything else as rendered"
        )
        return own, group

    def container(self, pod: Pod, container: Manifest, volumes: dict[str, list[str]], detach: bool) -> str:
        spec = pod.spec
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        arguments: list[str] = ["--name", f"{pod.pause}-{container['name']}", "--network", f"container:{pod.pause}"]
        if "runAsUser" in security:
            uid, gid = self.user_of(
                container["image"], container["name"], security["runAsUser"], security.get("runAsGroup", 0)
            )
            assert not (security.get("runAsNonRoot") and uid == 0), f"{container['name']}: runAsNonRoot with uid 0"
            arguments += ["--user", f"{uid}:{gid}"]
        if "fsGroup" in security:
            arguments += ["--group-add", str(security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            arguments.append("--read-only")
        for capability in (security.get("capabilities") or {}).get("drop") or []:
            arguments += ["--cap-drop", capability]
        for capability in (security.get("capabilities") or {}).get("add") or []:
            arguments += ["--cap-add", capability]
        if security.get("allowPrivilegeEscalation") is False:
            arguments += ["--security-opt", "no-new-privileges"]
        assert not security.get("privileged"), f"{container['name']} asks to be privileged"
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            arguments += ["--memory", f"{quantity_megabytes(limits['memory'])}m"]
        if "cpu" in limits:
            arguments += ["--cpus", quantity_cpus(limits["cpu"])]
        env = self.cluster.environment(container)
        for name, value in env.items():
            arguments += ["--env", f"{name}={value}"]
        for mount in container.get("volumeMounts") or []:
            source = volumes[mount["name"]]
            readonly = ["readonly"] if mount.get("readOnly") and "readonly" not in source else []
            arguments += ["--mount", ",".join([source[0], f"dst={mount['mountPath']}", *source[1:], *readonly])]
        if container.get("workingDir"):
            arguments += ["--workdir", container["workingDir"]]
        command = [expand(str(part), env) for part in container.get("command") or []]
        args = [expand(str(part), env) for part in container.get("args") or []]
        if command:
            arguments += ["--entrypoint", command[0]]
        return self.docker_run(*arguments, container["image"], *command[1:], *args, detach=detach)

    # --- watching ------------------------------------------------------------------------------

    def wait(self, container: str, timeout: float) -> int:
        """The container's exit code, once it has exited (within timeout seconds)."""
        return int(run(self.docker, "wait", container, timeout=timeout).stdout.strip())

    def logs(self, container: str) -> str:
        result = run(self.docker, "logs", "--tail", "80", container, check=False)
        return result.stdout + result.stderr

    def address(self, pod: Pod) -> str:
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return str(run(self.docker, "inspect", "--format", template, pod.pause).stdout.strip())

    def wait_ready(self, pod: Pod, container_name: str, timeout: float = 180) -> float:
        """Seconds until the container's rendered readinessProbe passes; fails if it exits first."""
        container = next(c for c in pod.spec["containers"] if c["name"] == container_name)
        probe = container["readinessProbe"]
        ports = {port.get("name"): port["containerPort"] for port in container.get("ports") or []}
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = run(self.docker, "inspect", "--format", "{{.State.Status}}", pod.containers[container_name])
            assert state.stdout.strip() == "running", (
                f"{pod.name}/{container_name} {state.stdout.strip()}:\n{self.logs(pod.containers[container_name])}"
            )
            if self.probe(pod, container_name, probe, ports):
                return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(
            f"{pod.name}/{container_name} not ready in {timeout} s:\n{self.logs(pod.containers[container_name])}"
        )

    def probe(self, pod: Pod, container_name: str, probe: Manifest, ports: dict[str | None, int]) -> bool:
        if "exec" in probe:
            command = probe["exec"]["command"]
            return run(self.docker, "exec", pod.containers[container_name], *command, check=False).returncode == 0
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            try:
                with socket.create_connection(
                    (self.address(pod), ports.get(port, port)), timeout=probe.get("timeoutSeconds", 1)
                ):
                    return True
            except OSError:
                return False
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            url = f"http://{self.address(pod)}:{ports.get(port, port)}{probe['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as answer:
                    status: int = answer.status
                    return 200 <= status < 400
            except OSError:
                return False
        raise AssertionError(f"probe {probe} is not emulated")

    # --- cleanup -------------------------------------------------------------------------------

    def remove_all(self) -> dict[str, list[str]]:
        """Remove every container, volume and network of the run; return what could not be removed."""
        label = f"label={RUN_LABEL}={self.run_id}"
        containers = run(self.docker, "ps", "--all", "--quiet", "--filter", label).stdout.split()
        if containers:
            run(self.docker, "rm", "--force", "--volumes", *containers, check=False, timeout=120)
        volumes = run(self.docker, "volume", "ls", "--quiet", "--filter", label).stdout.split()
        if volumes:
            run(self.docker, "volume", "rm", "--force", *volumes, check=False)
        run(self.docker, "network", "rm", self.network, check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)
        left = {
            "containers": run(self.docker, "ps", "--all", "--quiet", "--filter", label).stdout.split(),
            "volumes": run(self.docker, "volume", "ls", "--quiet", "--filter", label).stdout.split(),
            "networks": run(self.docker, "network", "ls", "--quiet", "--filter", label).stdout.split(),
        }
        return {kind: ids for kind, ids in left.items() if ids}
