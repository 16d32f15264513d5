"""The backend contract: start a runner, learn when it exits, stop it.

A backend knows nothing of requests. The server gives it a `RunnerSpec`; the runner it
starts dials the server back over RunnerLink with the spec's id and token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from falrt.gpus import GpuShare


@dataclass(frozen=True)
class RunnerSpec:
    """Everything needed to start one runner of one revision."""

    runner_id: str
    token: str
    server_address: str
    python: str  # interpreter of the revision's environment
    bundle_dir: Path
    entrypoint: str  # "module:Class"
    max_multiplexing: int
    grace_period_s: float
    log_path: Path
    machine_type: str = ""
    # GPUs it needs (of machine_type); the backend hands out whole GPUs, or, with
    # `runners_per_gpu` > 1, one GPU shared with at most that many runners of its app.
    num_gpus: int = 0
    runners_per_gpu: int = 1
    # Whose runner it is (a backend whose runners outlive the server records them).
    app_name: str = ""
    # The revision's requirements: a backend that builds the environment on another host
    # (ray) builds it from these; `python` is the server's own build of them.
    requirements: tuple[str, ...] = ()
    revision_id: str = ""
    # Extra environment variables: the app's secrets among them, so never in a repr.
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def gpu_share(self) -> GpuShare | None:
        """How the runner may share its GPU (None: it has its GPUs whole)."""
        return GpuShare(self.app_name, self.runners_per_gpu) if self.runners_per_gpu > 1 else None


class RunnerProcess(Protocol):
    """A started runner."""

    @property
    def exit_code(self) -> int | None:
        """The exit status once the runner has exited, else None."""

    async def wait(self) -> int:
        """Waits until the runner has exited; returns its exit status."""

    def terminate(self) -> None:
        """Asks the runner to stop gracefully (SIGTERM). Idempotent."""

    def kill(self) -> None:
        """Stops the runner now (SIGKILL). Idempotent."""

    @property
    def gpus(self) -> list[str]:
        """UUIDs of the GPUs the runner holds (until it exits)."""

    @property
    def exit_reason(self) -> str:
        """Why it ended, when the backend knows better than its log (an OOM kill); else ""."""

    @property
    def node(self) -> str:
        """The machine it runs on (`falrt runners list`); "" while not known yet."""


@dataclass(frozen=True)
class Survivor:
    """A runner that outlived the server that started it (a container keeps running while
    its server restarts), found by the next server on the same data directory."""

    runner_id: str
    token: str = field(repr=False)
    app_name: str
    revision_id: str
    machine_type: str
    max_multiplexing: int
    server_address: str  # the address it dials (the old server's)
    started_at: float  # wall-clock time it was started
    process: RunnerProcess


class Backend(Protocol):
    # Whether its runners outlive the server (they wait for the next one to adopt them).
    keeps_runners: bool

    async def open(self) -> None:
        """Connects to what the backend runs on (before `capacity` is asked). Idempotent."""

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        """"" when a runner of this machine type (with `num_gpus` GPUs, or one shared as
        `share` says) can start now, else why not."""

    async def fetch(self, spec: RunnerSpec, pulling: Callable[[], None]) -> None:
        """Makes what the runner runs present on this host; calls `pulling()` first when it
        must be fetched (the runner is then IMAGE_PULL)."""

    async def start(self, spec: RunnerSpec) -> RunnerProcess:
        """Starts a runner; returns once it is launched (not once it is ready)."""

    async def survivors(self, log_path: Callable[[str], Path]) -> list[Survivor]:
        """The runners of this server's previous life that still run (and removes those that
        ended); their output goes on into `log_path(runner_id)`. Called once, at startup."""

    async def close(self) -> None:
        """Releases the backend's resources. Idempotent."""
