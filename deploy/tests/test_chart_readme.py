"""deploy/helm/jotc/README.md against the chart it documents: each `helm install` / `helm upgrade` line
of its examples renders (`helm template` with the same release and flags) with a --timeout the
migration hook fits in; the images its build loop pushes are the ones those installs pull; and every
object it names as KIND/NAME (what kubectl takes) is one those renders, for release `jotc`, make."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml
from chart import CHART, VALUES_FILES, helm
from support import ROOT

README = CHART / "README.md"
# The README's "your values file": it says to start from this one.
STAND_INS = {"my-values.yaml": str(CHART / "examples/production-values.yaml")}
KINDS = {
    "deploy": "Deployment",
    "svc": "Service",
    "job": "Job",
    "secret": "Secret",  # pragma: allowlist secret (a kind of object, not a value)
    "statefulset": "StatefulSet",
    "cronjob": "CronJob",
    "configmap": "ConfigMap",
    "pvc": "PersistentVolumeClaim",
}


def shell_lines() -> list[str]:
    """The README's sh blocks, one command a line: continuations joined, `$(openssl rand …)` given a
    value (a 48-character token, as it would be)."""
    blocks = "\n".join(re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S))
    joined = blocks.replace("\\\n", " ")
    return [re.sub(r"\$\(openssl rand -hex 24\)", "ab" * 24, line) for line in joined.splitlines()]


def helm_commands(*verbs: str) -> list[list[str]]:
    lines = [line for line in shell_lines() if line.split()[:1] == ["helm"]]
    commands = [shlex.split(line, comments=True) for line in lines]
    return [words for words in commands if words[1:2] and words[1] in verbs]


def template_args(command: list[str]) -> list[str]:
    """`helm install|upgrade RELEASE CHART FLAGS` as `helm template` (which takes the same flags)."""
    release, chart, *flags = command[2:]
    assert chart == "deploy/helm/jotc", command
    flags = [STAND_INS.get(flag, flag) for flag in flags]
    return ["template", release, str(ROOT / chart), *flags]


@functools.cache
def rendered(args: tuple[str, ...]) -> list[dict[str, Any]]:
    """What helm renders, run where the README's commands are: the repository's root."""
    result = subprocess.run([helm(), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)}\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def installs() -> list[list[str]]:
    found = helm_commands("install", "upgrade")
    assert len(found) >= 5, found  # production, evaluation (two ways), the 0.1.0 upgrade, the upgrade runbook
    return found


def test_every_install_and_upgrade_line_renders_for_release_jotc() -> None:
    for command in installs():
        assert command[2] == "jotc", command
        rendered(tuple(template_args(command)))


def seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(amount) * units[unit] for amount, unit in re.findall(r"(\d+)([hms])", duration))


def test_every_install_upgrade_and_rollback_waits_long_enough_for_the_migration_hook() -> None:
    needed = yaml.safe_load((CHART / "values.yaml").read_text())["migrations"]["helmTimeoutSeconds"]
    commands = installs() + helm_commands("rollback")
    prose = re.findall(r"`(helm (?:install|upgrade|rollback) jotc [^`]*)`", README.read_text())
    for command in commands + [shlex.split(line) for line in prose]:
        assert "--timeout" in command, command
        assert seconds(command[command.index("--timeout") + 1]) >= needed, command


def test_the_images_the_readme_pushes_are_the_ones_its_installs_pull() -> None:
    text = "\n".join(shell_lines())
    services = re.search(r"^for service in (.+); do$", text, re.M)
    pushed = re.search(r"^\s*docker push (\S+)$", text, re.M)
    assert services is not None
    assert pushed is not None
    built = {pushed.group(1).replace("$service", service) for service in services.group(1).split()}
    for service in services.group(1).split():
        assert (ROOT / "services" / service / "Dockerfile").is_file(), service
    for command in installs():
        if "imageRegistry=registry.example.com/jotc" not in " ".join(command):
            continue
        docs = rendered(tuple(template_args(command)))
        pulled = {image for doc in docs for image in images(doc) if "/jotc/" in image}
        assert pulled, command
        assert pulled <= built, (pulled, built)


def images(doc: dict[str, Any]) -> list[str]:
    """Every container image a manifest names, however deep its pod template sits."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers"):
                found += [container["image"] for container in value]
            else:
                found += images(value)
    elif isinstance(doc, list):
        for item in doc:
            found += images(item)
    return found


def objects() -> set[tuple[str, str]]:
    """(kind, name) of everything the README's commands render for release jotc, and every values
    file of ci/ and examples/ (its load test sections), with the claims of each StatefulSet's first pod."""
    renders = [tuple(template_args(command)) for command in installs()]
    renders += [("template", "jotc", str(CHART), "-f", str(path)) for path in VALUES_FILES]
    made = set()
    for args in renders:
        for doc in rendered(args):
            made.add((doc["kind"], doc["metadata"]["name"]))
            for claim in doc["spec"].get("volumeClaimTemplates", []) if doc["kind"] == "StatefulSet" else []:
                made.add(("PersistentVolumeClaim", f"{claim['metadata']['name']}-{doc['metadata']['name']}-0"))
    return made


def test_every_object_the_readme_names_is_one_the_chart_makes() -> None:
    text = README.read_text()
    named = re.findall(rf"\b({'|'.join(KINDS)})/((?:data-)?(?:<release>-)?jotc-[a-z0-9<>-]*[a-z0-9>])", text)
    assert len(named) >= 8, named
    made = objects()
    # The release is jotc; helm template renders revision 1.
    placeholders = {"<release>": "jotc", "<revision>": "1"}
    missing = {
        f"{kind}/{name}"
        for kind, name in named
        if (KINDS[kind], re.sub("<release>|<revision>", lambda m: placeholders[m.group(0)], name)) not in made
    }
    assert missing == set(), f"the README names objects no render of release jotc makes: {sorted(missing)}"


def test_the_readme_says_what_the_api_answers_without_an_admin_token() -> None:
    admin = (ROOT / "services/api/src/jotc_api/routes/admin.py").read_text()
    assert "every admin request is 401" in admin
    assert "every admin request answers 401" in README.read_text()


def test_the_readme_never_claims_a_generated_secret() -> None:
    values = [line for line in README.read_text().splitlines() if line.startswith("| `adminToken")]
    assert values, "the values table names adminToken"
    assert not [line for line in values if "(generated)" in line]
    assert Path(CHART / "templates/secret.yaml").read_text().count("randAlphaNum") == 0
