"""`falrt images build-base`: a Python base image built from Debian packages, no Docker Hub.

mmdebstrap (with its merged-usr hook) writes a minimal Debian root file system with Python,
venv, pip and the CA certificates to a tarball, which is imported into the engine through the
docker SDK. The tag is content-addressed: a hash of the suite, the mirror, the package list,
the CA bundle and this recipe, so the same inputs give the same tag and an existing tag is
reused (unless `no_cache`). `ca_bundle` is added to the image's trust store (for hosts behind
a TLS-intercepting proxy), and pip, requests and Python's ssl are pointed at the store.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException

from falrt.images import DEFAULT_MIRROR, DEFAULT_SUITE
from falrt.images.engine import ImageError, ImageRef, LineSink, digest, engine, local_image_id
from falrt.images.engine import push as push_image

BASE_NAME = "falrt-base"
RECIPE = "falrt-base/1"  # change when the recipe below changes, so old tags are not reused
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "ca-certificates",
    "libstdc++6",  # manylinux wheels (grpcio, torch) link against it
)
TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"
EXTRA_CA = "/usr/local/share/ca-certificates/falrt-extra.crt"
ENV = (
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
    f"PIP_CERT={TRUST_STORE}",
    f"REQUESTS_CA_BUNDLE={TRUST_STORE}",
    f"SSL_CERT_FILE={TRUST_STORE}",
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
    "PIP_ROOT_USER_ACTION=ignore",
)


@dataclass(frozen=True)
class BaseSpec:
    """The inputs of a base image; `tag` hashes all of them."""

    python: str = "3.11"
    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    ca_bundle: bytes | None = None
    packages: tuple[str, ...] = PACKAGES

    def validate(self) -> None:
        shipped = SUITE_PYTHON.get(self.suite)
        if shipped is None:
            known = ", ".join(sorted(SUITE_PYTHON))
            raise ImageError(f"unknown Debian suite {self.suite!r} (known: {known})")
        if shipped != self.python:
            raise ImageError(
                f"Debian {self.suite} ships Python {shipped}, not {self.python}; "
                f"choose the suite that ships the Python you want"
            )

    def tag(self) -> str:
        key = digest(
            [RECIPE, self.suite, self.mirror, *sorted(self.packages), *ENV,
             self.ca_bundle or b""]
        )
        return f"py{self.python}-{self.suite}-{key[:16]}"


@dataclass(frozen=True)
class BaseResult:
    ref: str
    image_id: str
    cached: bool
    pushed: bool
    seconds: float


def build_base(
    spec: BaseSpec,
    *,
    tag: str | None = None,
    registry: str | None = None,
    no_cache: bool = False,
    on_line: LineSink | None = None,
) -> BaseResult:
    """Builds (or reuses) the base image and pushes it when `registry` is given. Blocking."""
    spec.validate()
    started = time.monotonic()
    ref = _ref(spec, tag, registry)
    client = engine()
    image_id = None if no_cache else _existing(client, ref, registry)
    cached = image_id is not None
    if image_id is None:
        image_id = _build(client, spec, ref, on_line)
    pushed = False
    if registry:
        push_image(client, ref, on_line)
        pushed = True
    return BaseResult(str(ref), image_id, cached, pushed, time.monotonic() - started)


def _existing(client: docker.DockerClient, ref: ImageRef, registry: str | None) -> str | None:
    """The local image with this tag; under its name without the registry, tagged anew."""
    image_id = local_image_id(client, str(ref))
    if image_id is None and registry:
        plain = ImageRef(ref.repository.removeprefix(registry.strip("/") + "/"), ref.tag)
        image_id = local_image_id(client, str(plain))
        if image_id is not None:
            client.api.tag(image_id, ref.repository, ref.tag)
    return image_id


def _ref(spec: BaseSpec, tag: str | None, registry: str | None) -> ImageRef:
    if tag is None:
        return ImageRef.make(BASE_NAME, spec.tag(), registry)
    name, _, version = tag.rpartition(":")
    if not name or "/" in version:  # no tag given ("repo" or "host:5000/repo")
        name, version = tag, spec.tag()
    return ImageRef.make(name, version, registry)


def _build(client: object, spec: BaseSpec, ref: ImageRef, on_line: LineSink | None) -> str:
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed; run scripts/docker.sh (as root)")
    with tempfile.TemporaryDirectory(prefix="falrt-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        _mmdebstrap(spec, tarball, Path(tmp), on_line)
        if on_line:
            on_line(f"importing {tarball.stat().st_size // 2**20} MiB into the engine as {ref}")
        changes = [f"ENV {e}" for e in ENV] + ['CMD ["python3"]']
        try:
            api = client.api  # type: ignore[attr-defined]
            api.import_image_from_file(
                str(tarball), repository=ref.repository, tag=ref.tag, changes=changes
            )
            image_id = local_image_id(client, str(ref))  # type: ignore[arg-type]
        except DockerException as exc:
            raise ImageError(f"importing the base image failed: {exc}") from exc
    if image_id is None:
        raise ImageError(f"the engine has no {ref} after importing it")
    return image_id


def _mmdebstrap(spec: BaseSpec, tarball: Path, tmp: Path, on_line: LineSink | None) -> None:
    hooks: list[str] = []
    if spec.ca_bundle is not None:
        ca = tmp / "extra-ca.crt"
        ca.write_bytes(spec.ca_bundle)
        # After the packages: add the bundle to the store and regenerate the store.
        hooks += [
            f"--customize-hook=install -D -m 0644 {ca} \"$1{EXTRA_CA}\"",
            "--customize-hook=chroot \"$1\" update-ca-certificates --fresh >/dev/null",
        ]
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        f"--include={','.join(spec.packages)}",
        *hooks,
        # No package lists in the image: apt in a container fetches them anew.
        "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
        spec.suite,
        str(tarball),
        f"deb {spec.mirror} {spec.suite} main",
        f"deb {spec.mirror} {spec.suite}-updates main",
    ]
    if on_line:
        on_line(f"mmdebstrap {spec.suite}: {', '.join(spec.packages)}")
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for raw in proc.stdout:
        line = raw.rstrip()
        tail = [*tail[-19:], line]
        if on_line and line:
            on_line(line)
    if proc.wait() != 0:
        raise ImageError(
            f"mmdebstrap failed (exit status {proc.returncode}):\n" + "\n".join(tail)
        )
