"""The `process` backend: every runner is a local subprocess running the shim.

The runner's stdout and stderr go to its log file (the server never reads a runner's pipes
on the event loop). Each runner gets its own process group, so stopping it also stops
anything its app spawned, and it is told the server's pid so that it dies with the server.
Nothing runs between fork and exec (no preexec_fn: the server has threads).

With zygotes on (the default; `falrt server --no-zygote` turns them off), a runner is
forked from a warm template of its interpreter when one is ready (falrt.backends.zygote),
which saves the interpreter's start and the shim's imports; otherwise it starts as above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from falrt import machines as machine_types
from falrt.backends.base import RunnerProcess, RunnerSpec, Survivor
from falrt.backends.spawn import Child, spawn
from falrt.backends.zygote import ForkedChild, ZygoteError, Zygotes
from falrt.gpus import GpuAllocator, GpuShare

log = logging.getLogger(__name__)

HOST_NAME = socket.gethostname()  # the node of every runner of this host's backends


class LocalProcess:
    """A runner subprocess, and the GPUs it holds until it exits."""

    def __init__(
        self, child: Child | ForkedChild, gpus: list[str] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._child = child
        self._gpus = gpus or []
        self._on_exit = on_exit

    @property
    def gpus(self) -> list[str]:
        return list(self._gpus)

    @property
    def exit_reason(self) -> str:
        return ""  # its log says why

    @property
    def node(self) -> str:
        return HOST_NAME

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def exit_code(self) -> int | None:
        return self._child.exit_code

    async def wait(self) -> int:
        code = await self._child.wait()
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:  # once: its GPUs are free again
            on_exit()
        return code

    def terminate(self) -> None:
        self._child.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._child.send_signal(signal.SIGKILL, group=True)  # the app's children go too


class ProcessBackend:
    """Starts runners as subprocesses of the server (or of its zygotes); hands out the
    host's GPUs whole."""

    keeps_runners = False  # they die with the server

    def __init__(self, gpus: GpuAllocator | None = None, zygotes: bool = True) -> None:
        self.gpus = gpus or GpuAllocator([])
        self.zygotes = Zygotes(zygote_env()) if zygotes else None

    async def open(self) -> None:
        return None

    async def fetch(self, spec: RunnerSpec, pulling: Callable[[], None]) -> None:
        return None  # the interpreter of its environment is on this host already

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        """CPU tiers always fit (the process backend sets no CPU or memory limits); GPU
        types need `num_gpus` free GPUs of the type (or room on one shared as `share` says)."""
        if machine_types.is_gpu(machine_type):
            return self.gpus.capacity(machine_type, max(1, num_gpus), share)
        return ""

    async def start(self, spec: RunnerSpec) -> RunnerProcess:
        """Raises NoCapacityError when the GPUs it needs were taken meanwhile."""
        held: list[str] = []
        if machine_types.is_gpu(spec.machine_type):
            gpus = self.gpus.acquire(spec.machine_type, max(1, spec.num_gpus), spec.runner_id,
                                     spec.gpu_share)
            held = [gpu.uuid for gpu in gpus]
        try:
            env = shim_env(spec, held)
            log_file = await asyncio.to_thread(_open_log, spec)
            try:
                child = await self._fork(spec, env, log_file) or await spawn(
                    [spec.python, "-m", "falrt.shim"],
                    cwd=spec.bundle_dir, env=env, stdout=log_file,
                    stderr=subprocess.STDOUT, new_session=True,
                )
            finally:
                log_file.close()
        except BaseException:
            self.gpus.release(spec.runner_id)
            raise
        return LocalProcess(child, held, lambda: self.gpus.release(spec.runner_id))

    async def _fork(self, spec: RunnerSpec, env: dict[str, str], log_file: BinaryIO
                    ) -> ForkedChild | None:
        """The runner forked from its interpreter's zygote; None when it must start the
        plain way (no zygote ready, or the fork failed)."""
        zygote = await self.zygotes.forkable(spec.python, env) if self.zygotes else None
        if zygote is None:
            return None
        try:
            return await zygote.fork(env, str(spec.bundle_dir), log_file)
        except ZygoteError as exc:
            log.warning("runner %s starts without the zygote: %s", spec.runner_id, exc)
            return None

    async def survivors(self, log_path: Callable[[str], Path]) -> list[Survivor]:
        return []  # its runners died with the previous server

    async def close(self) -> None:
        """Stops the zygotes (the fleet has stopped the runners). Idempotent."""
        if self.zygotes is not None:
            await self.zygotes.close()


def _open_log(spec: RunnerSpec) -> BinaryIO:
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(spec.log_path, "ab", buffering=0)


def _inherited_env() -> dict[str, str]:
    """This process's environment, less falrt's and virtualenv's variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("FALRT_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def zygote_env() -> dict[str, str]:
    """A zygote's environment: the one runners start from, with no GPU visible and none of
    a runner's own settings; it dies with this process."""
    return _inherited_env() | {"FALRT_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
                               "CUDA_VISIBLE_DEVICES": ""}


def shim_env(spec: RunnerSpec, gpus: list[str]) -> dict[str, str]:
    """The shim's environment: this process's own (less falrt's and virtualenv's), the
    spec's, and the shim's settings; it dies with this process."""
    env = _inherited_env()
    env.update(spec.env)
    env.update(
        FALRT_SERVER=spec.server_address,
        FALRT_RUNNER_ID=spec.runner_id,
        FALRT_RUNNER_TOKEN=spec.token,
        FALRT_BUNDLE_DIR=str(spec.bundle_dir),
        FALRT_ENTRYPOINT=spec.entrypoint,
        FALRT_MAX_MULTIPLEXING=str(spec.max_multiplexing),
        FALRT_GRACE_PERIOD_S=str(spec.grace_period_s),
        # The runner dies with the server (see falrt.shim.parent).
        FALRT_PARENT_PID=str(os.getpid()),
        PYTHONUNBUFFERED="1",
        # Its own GPUs only; none (hidden) for CPU machine types.
        CUDA_VISIBLE_DEVICES=",".join(gpus),
    )
    return env
