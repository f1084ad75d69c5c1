"""The images the stack names: the official ones when a registry answers, local stand-ins otherwise.

Which images are needed is read from the repository's own files (`docker compose config` and every
service's Dockerfile), so a new image in a compose file or a Dockerfile is noticed here. Each name
is served by, in order: the image already in the engine, a `docker pull`, or a stand-in built from
Debian packages under the same name (recipes in standins/, never in the product's Dockerfiles).
A stand-in carries the label below with a hash of its recipe, so a changed recipe is rebuilt and a
stand-in is never mistaken for the official image in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine import apt_install, can_install, run

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "standins"
STANDIN_LABEL = "org.jotc.standin"
BASE_IMAGE = "jotc-standin/debian:bookworm"
DEBIAN_MIRROR = os.environ.get("JOTC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PULL_SECONDS = 120

# Repository (without tag) → the recipe that stands in for it, and what kind of stand-in it is.
STANDINS: dict[str, tuple[str, str]] = {
    "python": ("python", "stand-in (Debian bookworm python3 3.11)"),
    "ghcr.io/astral-sh/uv": ("uv", "stand-in (the same uv release from its PyPI wheel)"),
    "postgres": ("postgres", "stand-in (Debian PostgreSQL 15)"),
    "redis": ("redis", "stand-in (Debian Redis 7)"),
    "adminer": ("adminer", "stand-in (Debian adminer on PHP's built-in server)"),
    "redis/redisinsight": ("redisinsight", "PLACEHOLDER (answers HTTP only; RedisInsight has no Debian package)"),
}


@dataclass(frozen=True)
class Provided:
    image: str
    source: str


def repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def tag(image: str) -> str:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


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


def images_named(compose_config: dict[str, object], dockerfiles: list[Path]) -> list[str]:
    """Every image the stack pulls: compose services without a build, and each Dockerfile's bases."""
    services = compose_config["services"]
    assert isinstance(services, dict)
    names = {service["image"] for service in services.values() if "build" not in service and "image" in service}
    for dockerfile in dockerfiles:
        names.update(dockerfile_bases(dockerfile))
    return sorted(names)


def recipe_hash(recipe: str) -> str:
    digest = hashlib.sha256()
    for path in sorted((RECIPES / recipe).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def label_of(docker: str, image: str) -> str | None:
    """None when the image is absent; "" for an image that is not a stand-in; else its recipe hash."""
    result = run(docker, "image", "inspect", image, "--format", "{{json .Config.Labels}}", check=False, timeout=30)
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout or "null") or {}
    return str(labels.get(STANDIN_LABEL, ""))


def pull(docker: str, image: str) -> bool:
    try:
        return run(docker, "pull", image, check=False, timeout=PULL_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def legacy_build(docker: str, image: str, context: Path, recipe: str, *build_args: str) -> None:
    """The classic builder: it uses local images as they are and needs no BuildKit frontend."""
    arguments = [arg for value in build_args for arg in ("--build-arg", value)]
    run(
        docker,
        "build",
        "--quiet",
        "--file",
        str(context / "Dockerfile.standin"),
        "--label",
        f"{STANDIN_LABEL}={recipe_hash(recipe)}",
        "--tag",
        image,
        *arguments,
        str(context),
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        timeout=900,
    )


def debian_base(docker: str) -> None:
    """Debian bookworm from debootstrap, trusting the CA certificates this host trusts, imported as an image."""
    if label_of(docker, BASE_IMAGE) is not None:
        return
    if shutil.which("debootstrap") is None:
        if not can_install():
            raise RuntimeError("debootstrap is needed to build the stand-in base image (apt-get install debootstrap)")
        apt_install("debootstrap")
    work = Path(tempfile.mkdtemp(prefix="jotc-debootstrap-"))
    try:
        rootfs = work / "rootfs"
        run(
            "debootstrap",
            "--variant=minbase",
            "--include=ca-certificates",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
            timeout=900,
        )
        extra = Path("/usr/local/share/ca-certificates")
        for certificate in extra.glob("*.crt") if extra.is_dir() else []:
            shutil.copy(certificate, rootfs / "usr/local/share/ca-certificates" / certificate.name)
        # The host's TMPDIR (scripts/test gives tests a private one) does not exist inside the chroot.
        run("chroot", str(rootfs), "update-ca-certificates", timeout=120, env={**os.environ, "TMPDIR": "/tmp"})
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker, "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            check=False,
            timeout=600,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import of the Debian base failed: {imported.stderr.decode(errors='replace')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def uv_binaries(version: str, into: Path) -> None:
    """uv and uvx of the given release, taken from its PyPI wheel for this machine."""
    with tempfile.TemporaryDirectory(prefix="jotc-uv-wheel-") as download:
        run(
            # The interpreter this venv was made from: it has pip (the venv, made by uv, has none).
            getattr(sys, "_base_executable", sys.executable),
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            download,
            f"uv=={version}",
            timeout=300,
        )
        wheel = next(Path(download).glob("uv-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in ("uv", "uvx"):
                member = f"uv-{version}.data/scripts/{name}"
                (into / name).write_bytes(archive.read(member))
                (into / name).chmod(0o755)


def build_standin(docker: str, image: str, recipe: str) -> None:
    debian_base(docker)
    with tempfile.TemporaryDirectory(prefix=f"jotc-standin-{recipe}-") as scratch:
        context = Path(scratch)
        shutil.copytree(RECIPES / recipe, context, dirs_exist_ok=True)
        if recipe == "uv":
            uv_binaries(tag(image), context)
        legacy_build(docker, image, context, recipe, f"BASE={BASE_IMAGE}")


def provide(docker: str, image: str) -> Provided:
    """Make `image` available in the engine; say where it came from."""
    recipe, kind = STANDINS.get(repository(image), (None, ""))
    found = label_of(docker, image)
    if found == "":
        return Provided(image, "official (already in the engine)")
    if found is not None and recipe is not None and found == recipe_hash(recipe):
        return Provided(image, kind)
    if pull(docker, image):
        return Provided(image, "official (pulled)")
    if recipe is None:
        raise RuntimeError(f"{image}: no registry answered and there is no stand-in recipe for {repository(image)}")
    build_standin(docker, image, recipe)
    return Provided(image, kind)
