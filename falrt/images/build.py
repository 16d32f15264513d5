"""Environment images: a base image, the falrt shim, and an app's requirements.

An environment image is what a container runner runs: `python -m falrt.shim` works in it, and
the app's requirements are importable. The app's code bundle is not in the image (the runner
fetches it at start), so a code-only deploy builds nothing.

Layers, bottom to top:

1. the base image (`falrt images build-base`, or any image with python3 and venv);
2. a virtual environment at /opt/falrt/venv with the shim's dependencies (grpcio, protobuf,
   msgspec, uvloop, pinned to the versions of this installation) — shared by every app;
3. falrt's own sources (falrt, falrt.sdk, falrt.v1, falrt.client, falrt.shim), a small COPY
   layer, found through a .pth file;
4. the app's requirements, installed by one RUN step per install stage
   (falrt/requirement_stages.py), in order, whose command lists them, so Docker's build cache
   keys each layer by its stage and those below. They are the top layers: a change of the
   requirements builds from the first changed stage on the cached layers below (a new falrt
   rebuilds them too).

The image tag is content-addressed: a hash of the base image's id, the sorted requirements
of each stage, the shim's pinned dependencies and a fingerprint of falrt's sources. An
existing tag is reused without building (and, with a registry, pulled from it when the
engine lacks it); `no_cache` rebuilds every layer.

The docker SDK is blocking: `EnvironmentImageBuilder.ensure` runs it in a worker thread and
delivers the build log, line by line as it comes, to an async callback on the caller's loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import io
import shlex
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import docker
from docker.errors import DockerException

import falrt
from falrt.images.engine import (
    ImageError,
    ImageRef,
    LineSink,
    consume_stream,
    digest,
    engine,
    local_image_id,
    pull,
    push,
)
from falrt.requirement_stages import join_stages, sorted_stage, split_stages

ENV_NAME = "falrt-env"
RECIPE = "falrt-env/3"  # change when the Dockerfile below changes
VENV = "/opt/falrt/venv"
SRC = "/opt/falrt/src"
SHIM_DEPENDENCIES = ("grpcio", "protobuf", "msgspec", "uvloop")
FALRT_PACKAGES = ("", "sdk", "v1", "client")  # under falrt/; the shim comes from falrt.shim

AsyncLineSink = Callable[[str], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class EnvironmentImage:
    """An environment image the engine has now."""

    ref: str
    image_id: str
    key: str
    built: bool  # a build ran (False: the tag existed, locally or in the registry)
    pulled: bool
    pushed: bool
    seconds: float


def shim_dependencies() -> list[str]:
    """The shim's dependencies pinned to the versions installed here (the wire must match)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SHIM_DEPENDENCIES]


def normalize_requirements(requirements: Iterable[str]) -> list[str]:
    """Each install stage stripped, de-duplicated and sorted (an option and its value as one
    entry), the stages in order (one stage normalizes as every list did before stages);
    raises ImageError for a multi-line specifier."""
    requirements = list(requirements)
    for requirement in requirements:
        if "\n" in requirement.strip() or "\r" in requirement.strip():
            raise ImageError(f"a requirement must be one line: {requirement!r}")
    stages = split_stages(requirements)
    return list(join_stages(sorted_stage(stage, unique=True) for stage in stages))


def falrt_sources() -> dict[str, bytes]:
    """falrt's runner-side sources, as `falrt/...` paths to contents."""
    root = Path(falrt.__file__).parent
    files: dict[str, bytes] = {}
    for package in FALRT_PACKAGES:
        folder = root / package if package else root
        prefix = f"falrt/{package}/" if package else "falrt/"
        for path in sorted(folder.glob("*.py")):
            files[prefix + path.name] = path.read_bytes()
    # falrt.shim lives in the repository's shim/ folder (see pyproject's package-dir).
    shim = importlib.util.find_spec("falrt.shim")
    if shim is None or shim.origin is None:
        raise ImageError("falrt.shim is not installed next to falrt")
    for path in sorted(Path(shim.origin).parent.glob("*.py")):
        files["falrt/shim/" + path.name] = path.read_bytes()
    return files


def environment_key(base_id: str, requirements: Sequence[str], sources: dict[str, bytes]) -> str:
    """The content address of an environment image."""
    parts: list[bytes | str] = [RECIPE, base_id, *shim_dependencies(), "--", *requirements, "--"]
    for name in sorted(sources):
        parts += [name, sources[name]]
    return digest(parts)[:24]


def dockerfile(base: str, requirements: Sequence[str]) -> str:
    pins = " ".join(shlex.quote(p) for p in shim_dependencies())
    pip = "pip install --no-input --no-cache-dir --progress-bar off"
    lines = [
        f"FROM {base}",
        f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:"
        "/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1",
        f"RUN python3 -m venv {VENV} && {pip} {pins} && "
        f"python -c 'import site; open(site.getsitepackages()[0] + \"/falrt-src.pth\", \"w\")"
        f".write(\"{SRC}\\n\")'",
    ]
    lines += [
        f"COPY falrt {SRC}/falrt",
        # Bytecode in the image: a container's own writes die with it, so without this
        # every runner compiled falrt's modules again at start (0.15-0.3 s of a cold start).
        f"RUN python -m compileall -q -j 0 {SRC}",
        'CMD ["python", "-m", "falrt.shim"]',
    ]
    stages = split_stages(requirements)
    for number, stage in enumerate(stages, 1):
        listed = " ".join(shlex.quote(r) for r in stage)
        if len(stages) == 1:  # the step of every image built before stages
            lines.append(f"RUN {pip} {listed}")
        else:
            shown = shlex.quote(f"installing stage {number}/{len(stages)}: {' '.join(stage)}")
            lines.append(f"RUN echo {shown} && {pip} {listed}")
    return "\n".join(lines) + "\n"


def build_context(base: str, requirements: Sequence[str], sources: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {"Dockerfile": dockerfile(base, requirements).encode(), **sources}
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0  # the same sources give the same context (and build cache hits)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class EnvironmentImageBuilder:
    """Builds, reuses, pushes and pulls environment images; one build per key at a time.

    `registry` (`HOST:PORT[/prefix]`): images are named there, pushed after a build and pulled
    when the engine lacks them. `network_mode` is the build containers' network ("host": pip
    reaches the index the way the host does).
    """

    def __init__(self, registry: str | None = None, network_mode: str = "host") -> None:
        self.registry = registry
        self.network_mode = network_mode
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(
        self,
        base: str,
        requirements: Sequence[str],
        *,
        no_cache: bool = False,
        on_line: AsyncLineSink | None = None,
    ) -> EnvironmentImage:
        """The environment image for `requirements` on `base`, built only when needed."""
        key = digest([base, *normalize_requirements(requirements)])
        async with self._locks.setdefault(key, asyncio.Lock()):
            return await _in_thread_with_log(
                lambda sink: self.ensure_blocking(
                    base, requirements, no_cache=no_cache, on_line=sink), on_line)

    async def app_base(
        self, dockerfile_text: str, *, no_cache: bool = False,
        on_line: AsyncLineSink | None = None,
    ) -> str:
        """The image an app's own Dockerfile builds (`falrt-app-base:<hash of its text>`),
        built only when the engine lacks it; its build log goes to `on_line`."""
        return await _in_thread_with_log(
            lambda sink: self._app_base(dockerfile_text, no_cache, sink), on_line)

    def _app_base(self, text: str, no_cache: bool, on_line: LineSink) -> str:
        client = engine()
        ref = ImageRef.make("falrt-app-base", digest([text])[:24], None)
        if not no_cache and local_image_id(client, str(ref)) is not None:
            on_line(f"the app's base image {ref} is cached")
            return str(ref)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            data = text.encode()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        try:
            stream = client.api.build(
                fileobj=io.BytesIO(buffer.getvalue()), custom_context=True, tag=str(ref),
                rm=True, forcerm=True, nocache=no_cache, pull=False, decode=True,
                network_mode=self.network_mode)
            consume_stream(stream, f"building the app's Dockerfile ({ref})", on_line)
        except DockerException as exc:
            raise ImageError(f"building the app's Dockerfile failed: {exc}") from exc
        return str(ref)

    def ensure_blocking(
        self,
        base: str,
        requirements: Sequence[str],
        *,
        no_cache: bool = False,
        on_line: LineSink | None = None,
    ) -> EnvironmentImage:
        """`ensure` for callers without an event loop: blocks while it builds."""
        started = time.monotonic()
        requirements = normalize_requirements(requirements)
        client = engine()
        base_id = self._base_id(client, base, on_line)
        sources = falrt_sources()
        key = environment_key(base_id, requirements, sources)
        ref = ImageRef.make(ENV_NAME, key, self.registry)

        def result(image_id: str, built: bool, pulled: bool, pushed: bool) -> EnvironmentImage:
            seconds = time.monotonic() - started
            return EnvironmentImage(str(ref), image_id, key, built, pulled, pushed, seconds)

        if not no_cache:
            image_id = local_image_id(client, str(ref))
            if image_id is not None:
                return result(image_id, built=False, pulled=False, pushed=False)
            if self.registry:
                image_id = pull(client, ref, on_line)
                if image_id is not None:
                    return result(image_id, built=False, pulled=True, pushed=False)
        image_id = self._build(client, ref, base, requirements, sources, no_cache, on_line)
        if self.registry:
            push(client, ref, on_line)
        return result(image_id, built=True, pulled=False, pushed=bool(self.registry))

    def _base_id(self, client: docker.DockerClient, base: str, on_line: LineSink | None) -> str:
        image_id = local_image_id(client, base)
        if image_id is None:
            name, _, tag = base.rpartition(":")
            if not name or "/" in tag:
                name, tag = base, "latest"
            image_id = pull(client, ImageRef(name, tag), on_line)
        if image_id is None:
            raise ImageError(f"base image {base} not found (build it: falrt images build-base)")
        return image_id

    def _build(
        self,
        client: docker.DockerClient,
        ref: ImageRef,
        base: str,
        requirements: Sequence[str],
        sources: dict[str, bytes],
        no_cache: bool,
        on_line: LineSink | None,
    ) -> str:
        context = build_context(base, requirements, sources)
        try:
            stream = client.api.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                tag=str(ref),
                rm=True,
                forcerm=True,
                nocache=no_cache,
                pull=False,
                decode=True,
                network_mode=self.network_mode,
                labels={"falrt.environment": ref.tag},
            )
            consume_stream(stream, f"building {ref}", on_line)
        except DockerException as exc:
            raise ImageError(f"building {ref} failed: {exc}") from exc
        image_id = local_image_id(client, str(ref))
        if image_id is None:
            raise ImageError(f"building {ref} finished without an image")
        return image_id


async def _in_thread_with_log(
    work: Callable[[LineSink], T], on_line: AsyncLineSink | None
) -> T:
    """`work(sink)` in a worker thread (the docker SDK blocks); every line it gives `sink`
    reaches `on_line` on the caller's loop as it comes, in order, before this returns."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def sink(line: str) -> None:  # called in the worker thread
        loop.call_soon_threadsafe(lines.put_nowait, line)

    async def forward() -> None:
        while (line := await lines.get()) is not None:
            if on_line is not None:
                await on_line(line)

    forwarder = asyncio.create_task(forward())
    try:
        return await asyncio.to_thread(work, sink)
    finally:
        loop.call_soon_threadsafe(lines.put_nowait, None)
        await forwarder
