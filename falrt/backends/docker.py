"""The `docker` backend: every runner is a container of its revision's environment image.

`falrt server --backend docker --docker-base IMAGE` builds each revision's environment into
an image (falrt/images/build.py: the base, the shim's dependencies, the app's requirements,
falrt's sources) instead of a virtual environment, and runs runners as containers of it,
through the docker Python SDK against the local engine:

- the container runs the shim (the image's CMD) on the host's network, so it dials the
  server at the address the server listens on;
- the app's code bundle is not in the image: the server's bundle directory is mounted
  read-only at /bundle;
- a named volume, `falrt-data`, is mounted at /data in every runner (weights, caches:
  `HF_HOME=/data/.cache/huggingface`, `TORCHINDUCTOR_CACHE_DIR=/data/.cache/inductor`);
- CPU and memory limits come from the machine type (falrt/machines.py); GPU machine types
  get whole GPUs as device requests (by UUID), from the same allocator as the process
  backend, and need the engine's NVIDIA runtime;
- the app's secrets and falrt's runner variables are the container's environment (nothing
  of the server's own environment leaks in);
- containers carry the label `falrt.runner` (and `falrt.server`); the runner's output is
  copied from the container's log stream into the runner's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import docker
from docker.errors import DockerException, NotFound
from docker.types import DeviceRequest

from falrt import machines
from falrt.backends.base import RunnerProcess, RunnerSpec
from falrt.gpus import GpuAllocator
from falrt.images.engine import ImageError

log = logging.getLogger(__name__)

DATA_VOLUME = "falrt-data"
BUNDLE_MOUNT = "/bundle"
LABEL = "falrt.runner"


class Container:
    """A runner container, and the GPUs it holds until it exits."""

    def __init__(self, container: Any, gpus: list[str], on_exit: Callable[[], None]) -> None:
        self._container = container
        self._gpus = gpus
        self._on_exit: Callable[[], None] | None = on_exit
        self._exit_code: int | None = None
        self._exit_reason = ""  # why it ended, when the engine knows (OOM-killed)

    @property
    def id(self) -> str:
        return str(self._container.id)

    @property
    def gpus(self) -> list[str]:
        return list(self._gpus)

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def exit_reason(self) -> str:
        return self._exit_reason

    async def wait(self) -> int:
        result = await asyncio.to_thread(self._container.wait)
        self._exit_code = int(result.get("StatusCode", -1))
        await asyncio.to_thread(self._learn_why)
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:  # once: its GPUs are free again
            on_exit()
        await asyncio.to_thread(self._remove)
        return self._exit_code

    def _remove(self) -> None:
        """The container goes once it has ended (its output was copied to the runner's log)."""
        with contextlib.suppress(DockerException):
            self._container.remove(force=True)

    def _learn_why(self) -> None:
        with contextlib.suppress(DockerException):
            self._container.reload()
            state = self._container.attrs.get("State", {})
            if state.get("OOMKilled"):
                limit = self._container.attrs.get("HostConfig", {}).get("Memory") or 0
                self._exit_reason = (f"OOM-killed: it used more than its memory limit of "
                                    f"{limit // 2**20} MiB (a bigger machine type has more)")

    def terminate(self) -> None:
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        """Sends the signal from a worker thread: the engine's API is blocking I/O, and
        terminate() and kill() are called on the server's event loop."""
        threading.Thread(target=self._send, args=(name,), daemon=True).start()

    def _send(self, name: str) -> None:
        with contextlib.suppress(NotFound, DockerException):  # it has gone already
            self._container.kill(signal=name)


class DockerBackend:
    """Runs runners as containers. `server_id` labels them as this server's."""

    def __init__(self, gpus: GpuAllocator | None = None, server_id: str = "") -> None:
        self.gpus = gpus or GpuAllocator([])
        self._server_id = server_id
        self._client: Any = None
        self._nvidia: bool | None = None

    def _engine(self) -> Any:
        if self._client is None:
            self._client = docker.from_env()
        return self._client

    async def open(self) -> None:
        """Asks the engine once whether it has the NVIDIA runtime (off the event loop)."""
        def runtimes() -> dict[str, Any]:
            try:
                return dict(self._engine().info().get("Runtimes", {}))
            except DockerException as exc:
                log.warning("the Docker engine does not answer: %s", exc)
                return {}

        self._nvidia = "nvidia" in await asyncio.to_thread(runtimes)

    def capacity(self, machine_type: str, num_gpus: int) -> str:
        if not machines.is_gpu(machine_type):
            return ""
        if not self._nvidia:
            return (f"no capacity for {machine_type}: the Docker engine has no NVIDIA runtime "
                    "(install the NVIDIA Container Toolkit)")
        return self.gpus.capacity(machine_type, max(1, num_gpus))

    async def fetch(self, spec: RunnerSpec, pulling: Callable[[], None]) -> None:
        """Pulls the runner's image (`spec.python`) from its registry when the engine lacks
        it. Raises ImageError naming what failed."""
        image = spec.python

        def present() -> bool:
            try:
                self._engine().images.get(image)
            except NotFound:
                return False
            return True

        def pull() -> None:
            repository, _, tag = image.rpartition(":")
            try:
                self._engine().images.pull(repository, tag=tag)
            except DockerException as exc:
                raise ImageError(f"cannot pull {image}: {exc}") from None

        if not await asyncio.to_thread(present):
            pulling()
            await asyncio.to_thread(pull)

    async def start(self, spec: RunnerSpec) -> RunnerProcess:
        """Starts the runner's container (`spec.python` names its image)."""
        held: list[str] = []
        if machines.is_gpu(spec.machine_type):
            held = [g.uuid for g in self.gpus.acquire(spec.machine_type, max(1, spec.num_gpus),
                                                       spec.runner_id)]
        try:
            container = await asyncio.to_thread(self._run, spec, held)
        except BaseException:
            self.gpus.release(spec.runner_id)
            raise
        threading.Thread(target=_copy_logs, args=(container, spec), daemon=True,
                         name=f"falrt-logs-{spec.runner_id}").start()
        return Container(container, held, lambda: self.gpus.release(spec.runner_id))

    def _run(self, spec: RunnerSpec, gpus: list[str]) -> Any:
        tier = machines.CPU_TIERS.get(spec.machine_type)
        limits: dict[str, Any] = {}
        if tier is not None:
            limits = {"nano_cpus": int(tier.cpus * 1e9), "mem_limit": tier.memory_bytes}
        if gpus:
            limits["device_requests"] = [DeviceRequest(device_ids=gpus,
                                                       capabilities=[["gpu"]])]
        return self._engine().containers.run(
            spec.python, detach=True, network_mode="host",
            environment=_environment(spec, gpus),
            volumes={str(spec.bundle_dir): {"bind": BUNDLE_MOUNT, "mode": "ro"},
                     DATA_VOLUME: {"bind": "/data", "mode": "rw"}},
            labels={LABEL: spec.runner_id, "falrt.server": self._server_id},
            name=f"falrt-{spec.runner_id}", **limits,
        )

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)


def _environment(spec: RunnerSpec, gpus: list[str]) -> dict[str, str]:
    env = dict(spec.env)  # the app's secrets and falrt's app variables
    env.update(
        FALRT_SERVER=spec.server_address,
        FALRT_RUNNER_ID=spec.runner_id,
        FALRT_RUNNER_TOKEN=spec.token,
        FALRT_BUNDLE_DIR=BUNDLE_MOUNT,
        FALRT_ENTRYPOINT=spec.entrypoint,
        FALRT_MAX_MULTIPLEXING=str(spec.max_multiplexing),
        FALRT_GRACE_PERIOD_S=str(spec.grace_period_s),
        PYTHONUNBUFFERED="1",
        HF_HOME="/data/.cache/huggingface",
        TORCHINDUCTOR_CACHE_DIR="/data/.cache/inductor",
        CUDA_VISIBLE_DEVICES=",".join(gpus),
    )
    return env


def _copy_logs(container: Any, spec: RunnerSpec) -> None:
    """Copies the container's output into the runner's log file until the container ends."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(spec.log_path, "ab", buffering=0) as out:
            for chunk in container.logs(stream=True, follow=True):
                out.write(chunk)
    except (DockerException, OSError) as exc:
        log.debug("log copy of %s ended: %s", spec.runner_id, exc)
