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
- containers carry the label `falrt.runner` (and `falrt.server`, `falrt.app`,
  `falrt.revision`, ...); the runner's output is copied from the container's log stream
  into the runner's log file.

Containers outlive the server (`reconnect_s` > 0, `falrt server --reconnect-window`): a
runner whose server went away dials it again for that long (FALRT_RECONNECT_S), and the next
server on the same data directory finds its running containers by their labels and adopts
them (`survivors`); ended ones are removed. Containers of other servers are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import DockerException, NotFound
from docker.types import DeviceRequest

from falrt import machines
from falrt.backends.base import RunnerProcess, RunnerSpec, Survivor
from falrt.backends.process import HOST_NAME
from falrt.gpus import GpuAllocator, GpuShare
from falrt.images.engine import ImageError

log = logging.getLogger(__name__)

DATA_VOLUME = "falrt-data"
BUNDLE_MOUNT = "/bundle"
LABEL = "falrt.runner"
SERVER_LABEL = "falrt.server"
T = TypeVar("T")


class Container:
    """A runner container, and the GPUs it holds until it exits."""

    def __init__(self, container: Any, gpus: list[str], on_exit: Callable[[], None]) -> None:
        self._container = container
        self._gpus = gpus
        self._on_exit: Callable[[], None] | None = on_exit
        self._exit_code: int | None = None
        self._exit_reason = ""  # why it ended, when the engine knows (OOM-killed)
        self._ended: asyncio.Future[int] | None = None

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

    @property
    def node(self) -> str:
        return HOST_NAME  # (the engine is the local one)

    async def wait(self) -> int:
        """Its exit status, once it has ended and been removed. One engine wait, however
        many callers wait (the fleet's exit watcher and a stop's reaper do)."""
        if self._ended is None:
            self._ended = asyncio.ensure_future(self._end())
        return await asyncio.shield(self._ended)

    async def _end(self) -> int:
        # A daemon thread, not the loop's executor: a server that leaves its containers
        # running must not wait for them at exit.
        self._exit_code = await _in_daemon_thread(self._wait_and_remove)
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:  # its GPUs are free again
            on_exit()
        return self._exit_code

    def _wait_and_remove(self) -> int:
        """Blocks until the container ends, learns why, and removes it (its output was
        copied to the runner's log)."""
        code = int(self._container.wait().get("StatusCode", -1))
        self._learn_why()
        _remove(self._container)
        return code

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
    """Runs runners as containers. `server_id` labels them as this server's; they wait
    `reconnect_s` for a restarted server (0: they stop with it)."""

    def __init__(
        self, gpus: GpuAllocator | None = None, server_id: str = "", reconnect_s: float = 0.0
    ) -> None:
        self.gpus = gpus or GpuAllocator([])
        self._server_id = server_id
        self._reconnect_s = reconnect_s
        self.keeps_runners = reconnect_s > 0
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

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        if not machines.is_gpu(machine_type):
            return ""
        if not self._nvidia:
            return (f"no capacity for {machine_type}: the Docker engine has no NVIDIA runtime "
                    "(install the NVIDIA Container Toolkit)")
        return self.gpus.capacity(machine_type, max(1, num_gpus), share)

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
                                                       spec.runner_id, spec.gpu_share)]
        try:
            container = await asyncio.to_thread(self._run, spec, held)
        except BaseException:
            self.gpus.release(spec.runner_id)
            raise
        _follow_logs(container, spec.runner_id, spec.log_path)
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
            environment=_environment(spec, gpus, self._reconnect_s),
            volumes={str(spec.bundle_dir): {"bind": BUNDLE_MOUNT, "mode": "ro"},
                     DATA_VOLUME: {"bind": "/data", "mode": "rw"}},
            labels={
                LABEL: spec.runner_id, SERVER_LABEL: self._server_id,
                "falrt.app": spec.app_name, "falrt.revision": spec.revision_id,
                "falrt.machine": spec.machine_type, "falrt.slots": str(spec.max_multiplexing),
                "falrt.started": f"{time.time():.3f}", "falrt.gpus": ",".join(gpus),
                "falrt.runners_per_gpu": str(spec.runners_per_gpu),
            },
            name=f"falrt-{spec.runner_id}", **limits,
        )

    async def survivors(self, log_path: Callable[[str], Path]) -> list[Survivor]:
        """This server's running containers (of its previous life), to adopt; its ended ones
        are removed. Containers of other servers are never touched."""
        found = await asyncio.to_thread(self._own_containers)
        survivors = []
        for container in found:
            runner_id = container.labels.get(LABEL, "")
            gpus = [g for g in container.labels.get("falrt.gpus", "").split(",") if g]
            process = Container(container, gpus, functools.partial(self.gpus.release, runner_id))
            survivor = _survivor(container, process) if container.status == "running" else None
            if survivor is None:
                log.info("removing the ended container %s of a previous run", container.name)
                await asyncio.to_thread(_remove, container)
                continue
            self.gpus.hold(gpus, runner_id, _share(container.labels))
            _follow_logs(container, runner_id, log_path(runner_id), since=int(time.time()))
            survivors.append(survivor)
        return survivors

    def _own_containers(self) -> list[Any]:
        try:
            return list(self._engine().containers.list(
                all=True, filters={"label": f"{SERVER_LABEL}={self._server_id}"}))
        except DockerException as exc:
            log.warning("cannot list this server's containers: %s", exc)
            return []

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)


def _survivor(container: Any, process: RunnerProcess) -> Survivor | None:
    """What a running container's labels and environment say of its runner; None when they
    do not say enough (a container of an older falrt: it is removed)."""
    labels = container.labels
    env = dict(item.partition("=")[::2] for item in container.attrs["Config"].get("Env") or [])
    try:
        return Survivor(
            runner_id=labels[LABEL], token=env["FALRT_RUNNER_TOKEN"], app_name=labels["falrt.app"],
            revision_id=labels["falrt.revision"], machine_type=labels["falrt.machine"],
            max_multiplexing=int(labels["falrt.slots"]), server_address=env["FALRT_SERVER"],
            started_at=float(labels["falrt.started"]), process=process,
        )
    except (KeyError, ValueError):
        return None


def _remove(container: Any) -> None:
    with contextlib.suppress(DockerException):
        container.remove(force=True)


def _environment(spec: RunnerSpec, gpus: list[str], reconnect_s: float) -> dict[str, str]:
    env = dict(spec.env)  # the app's secrets and falrt's app variables
    env.update(
        FALRT_SERVER=spec.server_address,
        FALRT_RUNNER_ID=spec.runner_id,
        FALRT_RUNNER_TOKEN=spec.token,
        FALRT_BUNDLE_DIR=BUNDLE_MOUNT,
        FALRT_ENTRYPOINT=spec.entrypoint,
        FALRT_MAX_MULTIPLEXING=str(spec.max_multiplexing),
        FALRT_GRACE_PERIOD_S=str(spec.grace_period_s),
        FALRT_RECONNECT_S=str(reconnect_s),
        PYTHONUNBUFFERED="1",
        HF_HOME="/data/.cache/huggingface",
        TORCHINDUCTOR_CACHE_DIR="/data/.cache/inductor",
        CUDA_VISIBLE_DEVICES=",".join(gpus),
    )
    return env


def _follow_logs(container: Any, runner_id: str, path: Path, since: int | None = None) -> None:
    """Copies the container's output (from `since`, a Unix time) into the runner's log file
    until the container ends, in a daemon thread."""
    threading.Thread(target=_copy_logs, args=(container, runner_id, path, since), daemon=True,
                     name=f"falrt-logs-{runner_id}").start()


def _copy_logs(container: Any, runner_id: str, path: Path, since: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "ab", buffering=0) as out:
            for chunk in container.logs(stream=True, follow=True, since=since):
                out.write(chunk)
    except (DockerException, OSError) as exc:
        log.debug("log copy of %s ended: %s", runner_id, exc)


async def _in_daemon_thread(work: Callable[[], T]) -> T:
    """`work()` in a daemon thread of its own: unlike `asyncio.to_thread`, nothing waits for
    it when the server exits."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, daemon=True, name="falrt-container-wait").start()
    return await future


def _share(labels: dict[str, str]) -> GpuShare | None:
    """How an adopted container shares its GPU (its labels say; older ones: not at all)."""
    runners = labels.get("falrt.runners_per_gpu", "1")
    share = int(runners) if runners.isdigit() else 1
    return GpuShare(labels.get("falrt.app", ""), share) if share > 1 else None
