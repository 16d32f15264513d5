"""Images against the real Docker engine and registry (scripts/docker.sh starts both).

The base image is built once per machine (reused when present); environment images are
built for `six` on it. Skipped, with the reason, only when no Docker engine answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

docker = pytest.importorskip("docker")

try:
    _client = docker.from_env(timeout=600)
    _client.ping()
except docker.errors.DockerException:
    pytest.skip("no Docker engine: run scripts/docker.sh", allow_module_level=True)

from falrt.cli.main import main  # noqa: E402

from falrt.images.base import BaseSpec, build_base  # noqa: E402
from falrt.images.build import EnvironmentImageBuilder  # noqa: E402
from falrt.images.engine import ImageError  # noqa: E402

REGISTRY = "127.0.0.1:5000"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 600  # a cold base image: mmdebstrap downloads ~60 MB of Debian packages

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(BUILD_TIMEOUT)]


def spec() -> BaseSpec:
    # The host's CA bundle: pip in the containers must trust what the host trusts (this CI
    # is behind a TLS-intercepting proxy).
    return BaseSpec(ca_bundle=HOST_CA.read_bytes() if HOST_CA.exists() else None)


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    yield _client


@pytest.fixture(scope="module")
def base() -> str:
    """The base image: built when this machine has none, else reused."""
    return build_base(spec()).ref


def run_in(client: docker.DockerClient, image: str, code: str) -> str:
    out = client.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none")
    return bytes(out).decode()


def test_base_image_is_reused(client: docker.DockerClient, base: str) -> None:
    started = time.monotonic()
    again = build_base(spec())
    assert time.monotonic() - started < 2
    assert again.cached and again.ref == base
    assert again.image_id == client.images.get(base).id
    out = run_in(client, base, "import sys, ssl, venv; print(sys.version_info[:2])")
    assert out.strip() == "(3, 11)"
    if HOST_CA.exists():  # the host's bundle is in the image's trust store
        first_cert = HOST_CA.read_text().split("-----END CERTIFICATE-----")[0]
        store = client.containers.run(
            base, ["cat", "/usr/local/share/ca-certificates/falrt-extra.crt"], remove=True
        )
        assert first_cert.strip() in bytes(store).decode()


def test_environment_image_is_built_once(client: docker.DockerClient, base: str) -> None:
    builder = EnvironmentImageBuilder()
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    first = asyncio.run(builder.ensure(base, ["six"], no_cache=True, on_line=collect))
    assert first.built and not first.pushed
    assert any("RUN pip install" in line and "six" in line for line in lines), lines
    assert any("Successfully installed six" in line for line in lines), lines

    layers = len(client.images.get(first.ref).history())
    lines.clear()
    started = time.monotonic()
    second = asyncio.run(builder.ensure(base, [" six "], on_line=collect))
    elapsed = time.monotonic() - started
    assert not second.built and second.ref == first.ref and second.image_id == first.image_id
    assert elapsed < 2, elapsed
    assert lines == []  # nothing was built
    assert len(client.images.get(second.ref).history()) == layers

    out = run_in(client, first.ref, "import falrt.shim.main, six; print(six.__name__)")
    assert out.strip() == "six"
    # falrt's modules come compiled: a runner's container does not compile them at start
    # (what it writes dies with it). The import finds every one's bytecode.
    stale = run_in(client, first.ref, (
        "import importlib.util, pathlib, falrt; root = pathlib.Path(falrt.__file__).parent; "
        "print([str(p) for p in root.rglob('*.py') "
        "if not pathlib.Path(importlib.util.cache_from_source(str(p))).exists()])"))
    assert stale.strip() == "[]"


def test_requirement_stages_are_installed_by_one_step_each_in_order(
    client: docker.DockerClient, base: str,
) -> None:
    lines: list[str] = []
    image = EnvironmentImageBuilder().ensure_blocking(
        base, ["six", "", "idna"], no_cache=True, on_line=lines.append)
    first = next(n for n, line in enumerate(lines) if "installing stage 1/2: six" in line)
    second = next(n for n, line in enumerate(lines) if "installing stage 2/2: idna" in line)
    assert first < second, lines
    assert any("Successfully installed six" in line for line in lines[first:second]), lines
    assert run_in(client, image.ref, "import idna, six; print('ok')").strip() == "ok"


def test_push_and_pull(client: docker.DockerClient, base: str) -> None:
    builder = EnvironmentImageBuilder(registry=f"{REGISTRY}/falrt-test")
    image = builder.ensure_blocking(base, ["six"])
    assert image.ref.startswith(f"{REGISTRY}/falrt-test/falrt-env:")
    if image.built:
        assert image.pushed
    else:  # an earlier run pushed it: make sure the registry has it anyway
        client.images.push(image.ref.rsplit(":", 1)[0], tag=image.key)
    tags = httpx.get(f"http://{REGISTRY}/v2/falrt-test/falrt-env/tags/list").json()["tags"]
    assert image.key in tags

    # Remove every local name of the image and the image itself, then ensure again: pulled.
    for tag in client.images.get(image.ref).tags:
        client.images.remove(tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image.ref)
    again = builder.ensure_blocking(base, ["six"])
    assert again.pulled and not again.built and again.ref == image.ref
    assert run_in(client, again.ref, "import falrt.shim, six; print('ok')").strip() == "ok"


def test_build_error_names_the_failed_step(base: str) -> None:
    builder = EnvironmentImageBuilder()
    lines: list[str] = []
    with pytest.raises(ImageError) as failure:
        builder.ensure_blocking(base, ["falrt-no-such-package-zz==9.9"], on_line=lines.append)
    message = str(failure.value)
    assert "failed at Step" in message and "RUN pip install" in message, message
    assert "falrt-no-such-package-zz" in message, message
    # pip's own explanation is in the message, without its terminal colours
    assert "ERROR: No matching distribution found for falrt-no-such-package-zz" in message
    assert "\x1b[" not in message
    assert any("No matching distribution" in line for line in lines), lines[-10:]


def test_cli_reuses_tags_and_pushes(base: str) -> None:
    def falrt_images(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(main, ["images", *args, "--output", "json"])
        assert result.exit_code == 0, result.output
        value = json.loads(result.stdout)
        assert isinstance(value, dict)
        return value

    ca = ["--ca-bundle", str(HOST_CA)] if HOST_CA.exists() else []
    local = falrt_images("build-base", *ca)
    assert local["ref"] == base and local["cached"] and not local["pushed"]
    # With a registry: the local image of the same tag is named there and pushed, not rebuilt.
    pushed = falrt_images("build-base", *ca, "--registry", f"{REGISTRY}/falrt-test")
    assert pushed["cached"] and pushed["pushed"] and pushed["id"] == local["id"]
    assert str(pushed["ref"]) == f"{REGISTRY}/falrt-test/{base}"
    repo = "falrt-test/falrt-base"
    tags = httpx.get(f"http://{REGISTRY}/v2/{repo}/tags/list").json()["tags"]
    assert base.split(":")[1] in tags

    env = falrt_images("build-env", "--base", base, "-r", "six")
    assert str(env["ref"]).startswith("falrt-env:") and env["id"]

    wrong = CliRunner().invoke(main, ["images", "build-base", "--python", "3.12"])
    assert wrong.exit_code != 0 and "ships Python 3.11" in wrong.output
