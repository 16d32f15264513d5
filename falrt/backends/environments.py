"""Python environments for runners of the process backend, cached by requirements hash.

An app without requirements runs on the server's own interpreter (no environment is
created). An app with requirements gets a virtual environment under `venvs/<key>/`, where
`key` hashes the interpreter version and the sorted requirement specifiers of each install
stage (falrt/requirement_stages.py). The environment sees the server's site-packages
(through a .pth file that calls `site.addsitedir`, so the falrt shim and its dependencies
are importable) and has the app's requirements installed on top with pip, one `pip install`
per stage in order, so a stage's builds see the stages before it (with pip's
`--no-build-isolation` in the stage); a requirement already satisfied there is not installed
again. A finished environment carries a `.ready` marker; one without it is rebuilt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from falrt import errors
from falrt.backends.spawn import run_streaming
from falrt.requirement_stages import sorted_stage, split_stages

if TYPE_CHECKING:
    from falrt.images.build import EnvironmentImageBuilder

LineSink = Callable[[str], Awaitable[None]]
READY = ".ready"


def environment_key(requirements: Sequence[str]) -> str:
    """"" for no requirements, else a stable hash of the interpreter and the requirements'
    stages (one stage hashes as every list did before stages, so its cached environment
    stays valid; splitting the same specifiers into other stages changes the key)."""
    stages = split_stages(requirements)
    if not stages:
        return ""
    listed = (list(sorted_stage(stages[0])) if len(stages) == 1
              else [list(sorted_stage(stage)) for stage in stages])
    spec = json.dumps([sys.version_info[:2], listed])
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


class Environments(Protocol):
    """Where runners' environments come from: virtual environments (the process backend) or
    container images (the docker backend)."""

    def python_for(self, key: str) -> str:
        """What a runner of environment `key` runs: an interpreter, or an image."""

    async def ensure(
        self, requirements: Sequence[str], on_line: LineSink, *, no_cache: bool = False,
        dockerfile: str = "",
    ) -> str:
        """Builds the environment for `requirements` unless cached (`no_cache`: always);
        returns its key. `dockerfile`: the app's own base (container environments only)."""


class ImageEnvironments:
    """Environments as container images on `base` (falrt/images/build.py); the key of an
    environment is its image reference."""

    def __init__(self, builder: EnvironmentImageBuilder, base: str) -> None:
        self._builder = builder
        self._base = base

    def python_for(self, key: str) -> str:
        return key

    async def ensure(
        self, requirements: Sequence[str], on_line: LineSink, *, no_cache: bool = False,
        dockerfile: str = "",
    ) -> str:
        base = self._base
        if dockerfile:  # the app's own base image, built from its Dockerfile
            base = await self._builder.app_base(dockerfile, no_cache=no_cache, on_line=on_line)
        image = await self._builder.ensure(base, requirements, no_cache=no_cache,
                                           on_line=on_line)
        await on_line(f"environment image {image.ref} "
                      f"({'built' if image.built else 'pulled' if image.pulled else 'cached'}, "
                      f"{image.seconds:.1f} s)")
        return image.ref


class EnvironmentBuilder:
    """Builds and caches environments; one build per key at a time."""

    def __init__(self, venvs_dir: Path, base_python: str) -> None:
        self._dir = venvs_dir
        self._base_python = base_python
        self._locks: dict[str, asyncio.Lock] = {}

    def python_for(self, key: str) -> str:
        """The interpreter of a built environment ("" key: the server's)."""
        return self._base_python if not key else str(self._dir / key / "bin" / "python")

    def is_ready(self, key: str) -> bool:
        return not key or (self._dir / key / READY).exists()

    async def ensure(
        self, requirements: Sequence[str], on_line: LineSink, *, no_cache: bool = False,
        dockerfile: str = "",
    ) -> str:
        """Builds the environment for `requirements` unless cached (`no_cache`: always);
        returns its key.

        Raises InvalidArgumentError when pip cannot install the requirements.
        """
        if dockerfile:
            raise errors.InvalidArgumentError(
                "the app brings its own Dockerfile: deploy it to a server with the docker "
                "backend (falrt server --backend docker)")
        key = environment_key(requirements)
        if not key:
            return key
        async with self._locks.setdefault(key, asyncio.Lock()):
            if not no_cache and await asyncio.to_thread(self.is_ready, key):
                await on_line(f"environment {key} is cached")
                return key
            await self._build(key, requirements, on_line)
        return key

    async def _build(self, key: str, requirements: Sequence[str], on_line: LineSink) -> None:
        target = self._dir / key
        await asyncio.to_thread(_reset_dir, target)
        await on_line(f"creating environment {key}")
        code = await run_streaming(
            [self._base_python, "-m", "venv", "--without-pip", str(target)], on_line
        )
        if code != 0:
            raise errors.InternalError(f"creating the environment failed (exit status {code})")
        await asyncio.to_thread(_link_base_site, self._base_python, target)
        stages = split_stages(requirements)
        for number, stage in enumerate(stages, 1):
            which = f"stage {number}/{len(stages)}: " if len(stages) > 1 else ""
            await on_line(f"installing {which}{' '.join(stage)}")
            code = await self._pip_install(target, stage, on_line)
            if code != 0:
                raise errors.InvalidArgumentError(
                    f"installing the requirements failed ({which}pip exit status {code}); "
                    "see the build log above")
        await asyncio.to_thread((target / READY).write_text, "")

    async def _pip_install(self, target: Path, specs: Sequence[str], on_line: LineSink) -> int:
        """One `pip install` of `specs` into the environment at `target`; its exit status."""
        return await run_streaming(
            [self._base_python, "-m", "pip", "--python", str(target / "bin" / "python"),
             "install", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
             *specs],
            on_line,
        )


def _reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _link_base_site(base_python: str, target: Path) -> None:
    """Makes the base interpreter's site-packages visible inside the environment."""
    out = subprocess.run(
        [base_python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
        check=True, capture_output=True, text=True,
    ).stdout
    dirs = json.loads(out)
    site_dirs = list((target / "lib").glob("python*/site-packages"))
    if len(site_dirs) != 1:
        raise errors.InternalError(f"unexpected environment layout under {target}")
    site_dir = site_dirs[0]
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
    (site_dir / "_falrt_base.pth").write_text("\n".join(lines) + "\n")
