"""The `inprocess` backend: runners whose process is played by the caller, in the server's
own process and event loop.

It starts nothing: `start` records the runner's spec and returns a handle that "runs" until
it is terminated or killed (SIGTERM-like: it exits 0 at once; SIGKILL-like: exit -9). The
caller plays the runner with the spec's id and token: it attaches it to the fleet (as the
runner's Hello would), answers what the runner's outbox carries, and may make it exit
(`InProcessRunner.exit`). This is how the fleet and the scheduler run without a network or
a subprocess: the in-process tests, and anything embedding falrt's planes. Not a choice of
`falrt server --backend` (nothing would dial in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from falrt import machines as machine_types
from falrt.backends.base import RunnerSpec, Survivor
from falrt.gpus import GpuShare


class InProcessRunner:
    """A started runner: its spec, and its exit once it has one. Loop-affine."""

    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.terminated = False  # asked to stop gracefully (SIGTERM)

    @property
    def gpus(self) -> list[str]:
        return []

    @property
    def exit_reason(self) -> str:
        return ""

    @property
    def node(self) -> str:
        return "inprocess"

    @property
    def exit_code(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def terminate(self) -> None:
        self.terminated = True
        self.exit(0)

    def kill(self) -> None:
        self.exit(-9)

    def exit(self, code: int) -> None:
        """The runner ends with `code` (a crash, when the server did not ask). Idempotent."""
        if not self._exited.done():
            self._exited.set_result(code)


class InProcessBackend:
    """Runners of any CPU machine type, as many as asked for. See the module docstring."""

    keeps_runners = False

    def __init__(self) -> None:
        self.started: list[InProcessRunner] = []  # every runner started, in order
        self._waiters: list[tuple[Callable[[InProcessRunner], bool], asyncio.Future[None]]] = []

    async def open(self) -> None:
        return None

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        if machine_types.is_gpu(machine_type):
            return f"the inprocess backend has no GPUs (machine type {machine_type})"
        return ""

    async def fetch(self, spec: RunnerSpec, pulling: Callable[[], None]) -> None:
        return None

    async def start(self, spec: RunnerSpec) -> InProcessRunner:
        runner = InProcessRunner(spec)
        self.started.append(runner)
        for matches, waiter in list(self._waiters):
            if matches(runner) and not waiter.done():
                waiter.set_result(None)
        return runner

    async def next_start(self, app_name: str = "") -> InProcessRunner:
        """The next runner started (of `app_name`, when given) from now on."""
        count = len(self.started)

        def matches(runner: InProcessRunner) -> bool:
            return not app_name or runner.spec.app_name == app_name

        waiter = asyncio.get_running_loop().create_future()
        entry = (matches, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        finally:
            self._waiters.remove(entry)
        return next(r for r in self.started[count:] if matches(r))

    async def survivors(self, log_path: Callable[[str], Path]) -> list[Survivor]:
        return []

    async def close(self) -> None:
        for runner in self.started:
            runner.kill()


__all__ = ["InProcessBackend", "InProcessRunner"]
