"""What runs on a Ray node for one runner of the `ray` backend: the body of its actor.

The server's `RayBackend` (falrt/backends/ray.py) makes one Ray actor of `NodeRunner` per
runner, with the machine type's resources, so Ray places it on a node that has them. Its
`start` begins the run, whose events the server reads with `events` (a long poll):

1. `Placed`: the node it landed on, and the GPUs Ray gave it;
2. the bundle, fetched from the server over `RunnerLink.FetchBundle` (authenticated by the
   runner's id and token) into the node's cache, `<cache>/bundles/<sha256>/`, unless a
   runner of the same bundle fetched it before on this node;
3. the environment, built from the revision's requirements by the process backend's
   `EnvironmentBuilder` into `<cache>/venvs/<key>/` (cached by the same key; a file lock
   keeps two runners of one node from building one environment at once);
4. the shim, a subprocess in its own process group with the process backend's environment
   (`shim_env`): it dials the server's advertised address, sees the GPUs Ray assigned
   (`CUDA_VISIBLE_DEVICES`) and dies with the actor (`FALRT_PARENT_PID`);
5. `Output` chunks: what the preparation said and what the shim writes, for the runner's log
   on the server; then `Exited`, the shim's exit status.

`signal` reaches the shim (or stops the preparation when it has not started yet). This
module runs in a Ray worker process on the node and reads that process's environment: the
base of the shim's (as the process backend copies the server's) and TMPDIR (through
`tempfile`, for the cache's place). The GPUs are those `ray.get_gpu_ids()` names (which Ray
also set CUDA_VISIBLE_DEVICES of the actor's process to), given to the shim by their NVML
UUIDs, as the process backend gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

from falrt import bundle
from falrt.backends.base import RunnerSpec
from falrt.backends.environments import EnvironmentBuilder, environment_key
from falrt.backends.process import shim_env
from falrt.backends.spawn import Child, read_pipe, spawn
from falrt.gpus import Gpu, discover
from falrt.v1 import runner_pb2, runner_pb2_grpc

# Where runners' bundles and environments are cached on each node, under the node's own
# temporary folder (TMPDIR on the node, else /tmp).
CACHE_FOLDER = "falrt-ray"
# The server checked the bundle's size when it was deployed; this only bounds what a node
# unpacks.
MAX_BUNDLE_BYTES = 4 * 1024**3
OUTPUT_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Placed:
    """Ray placed the runner: the node (host name / Ray node id) and the GPUs it assigned."""

    node: str
    gpus: list[str]


@dataclass(frozen=True)
class Output:
    """Bytes for the runner's log."""

    data: bytes


@dataclass(frozen=True)
class Exited:
    """The shim ended (or never started: the preparation failed or was stopped)."""

    code: int
    reason: str = ""  # why, when it never started


NodeEvent = Placed | Output | Exited


class NodeRunner:
    """One runner on its node. Its methods run on the actor's event loop (Ray runs an async
    actor's calls concurrently there): `start` once, then `events` in turn (each call a
    long poll, acknowledging what the previous returned), `signal` any number of times.
    Works alike through Ray Client, which has no streaming generators."""

    def __init__(self, cache_dir: str = "") -> None:
        self._cache = Path(cache_dir or Path(tempfile.gettempdir()) / CACHE_FOLDER)
        self._child: Child | None = None
        self._run: asyncio.Task[None] | None = None
        self._preparing: asyncio.Task[Path] | None = None
        self._stop_signal = 0  # a signal that came before the shim started
        self._python = sys.executable  # the environment's interpreter, once prepared
        # Events not acknowledged yet; the first is number `_first` of the run's events.
        self._events: deque[NodeEvent] = deque()
        self._first = 0
        self._news = asyncio.Event()

    async def start(self, spec: RunnerSpec) -> None:
        """Starts preparing and running the runner (see the module docstring); returns at
        once. Idempotent."""
        if self._run is None:
            self._run = asyncio.ensure_future(self._main(spec))

    async def events(self, seen: int) -> list[NodeEvent]:
        """The events after the first `seen` of the run (those are forgotten), once there
        is at least one; the last is `Exited`."""
        while self._first + len(self._events) <= seen:
            self._news.clear()
            await self._news.wait()
        while self._first < seen:
            self._events.popleft()
            self._first += 1
        return list(self._events)

    async def signal(self, number: int, group: bool) -> None:
        """Sends the signal to the shim (`group`: to its process group, the app's children
        too); before the shim runs, stops the preparation instead."""
        if self._child is not None:
            self._child.send_signal(signal.Signals(number), group=group)
            return
        self._stop_signal = number
        if self._preparing is not None:
            self._preparing.cancel()

    def _emit(self, event: NodeEvent) -> None:
        self._events.append(event)
        self._news.set()

    async def _main(self, spec: RunnerSpec) -> None:
        node, gpus = _placement()
        self._emit(Placed(node, gpus))
        self._preparing = asyncio.ensure_future(self._prepare(spec))
        try:
            bundle_dir = await self._preparing
        except asyncio.CancelledError:
            self._emit(Exited(-self._stop_signal, "stopped before it started"))
            return
        except Exception as exc:
            self._emit(Exited(1, f"preparing the runner on its node failed: {exc}"))
            return
        if self._stop_signal:
            self._emit(Exited(-self._stop_signal, "stopped before it started"))
            return
        code = await self._serve(dataclasses.replace(spec, bundle_dir=bundle_dir), gpus)
        self._emit(Exited(code))

    async def _prepare(self, spec: RunnerSpec) -> Path:
        """The bundle and the environment on this node; returns the bundle's folder."""
        async def say(line: str) -> None:
            self._emit(Output(f"{line}\n".encode()))

        bundle_dir = await self._bundle(spec, say)
        key = environment_key(spec.requirements)
        venvs = EnvironmentBuilder(self._cache / "venvs", sys.executable)
        if key:
            async with _file_lock(self._cache / "venvs" / f".{key}.lock"):
                await venvs.ensure(spec.requirements, say)
        self._python = venvs.python_for(key)
        return bundle_dir

    async def _bundle(self, spec: RunnerSpec, say: Callable[[str], Awaitable[None]]) -> Path:
        sha = spec.bundle_dir.name
        target = self._cache / "bundles" / sha
        if await asyncio.to_thread(target.is_dir):
            return target
        await say(f"fetching bundle {sha[:12]} from {spec.server_address}")
        data = await fetch_bundle(spec)
        await asyncio.to_thread(bundle.unpack, data, target, max_bytes=MAX_BUNDLE_BYTES)
        return target

    async def _serve(self, spec: RunnerSpec, gpus: list[str]) -> int:
        """Runs the shim to its end, its output as events; its exit status."""
        read_end, write_end = os.pipe()
        try:
            self._child = await spawn(
                [self._python, "-m", "falrt.shim"], cwd=spec.bundle_dir,
                env=shim_env(spec, gpus), stdout=write_end, stderr=subprocess.STDOUT,
                new_session=True)
        finally:
            os.close(write_end)
        async for data in read_pipe(read_end, OUTPUT_CHUNK_BYTES):
            self._emit(Output(data))
        return await self._child.wait()


def _placement() -> tuple[str, list[str]]:
    """This node (host name / the start of its Ray node id) and the GPUs Ray assigned to
    this actor, by UUID (`gpu_uuids`). Ray is imported here only: this module runs inside
    a Ray worker."""
    import ray

    node_id = str(ray.get_runtime_context().get_node_id())
    ray_ids = [str(g) for g in ray.get_gpu_ids()]
    inventory = discover() if ray_ids else []  # (NVML: only where Ray gave GPUs)
    return f"{socket.gethostname()}/{node_id[:12]}", gpu_uuids(ray_ids, inventory)


def gpu_uuids(ray_ids: list[str], gpus: list[Gpu]) -> list[str]:
    """Ray's GPU ids as NVML's UUIDs, which the server and the shim name GPUs by (the
    runner list, GPU failure handling, heartbeat figures) and CUDA takes as well in
    CUDA_VISIBLE_DEVICES. Ray's ids are the node's device indices (NVML's order), or
    UUIDs when the node was started with CUDA_VISIBLE_DEVICES naming UUIDs; an id `gpus`
    (the node's NVML inventory) has no device for stays as Ray gave it. Pure."""
    by_index = {str(gpu.index): gpu.uuid for gpu in gpus}
    return [by_index.get(ray_id, ray_id) for ray_id in ray_ids]


async def fetch_bundle(spec: RunnerSpec) -> bytes:
    """The runner's bundle (a gzipped tar) from the server that started it."""
    async with _channel(spec) as channel:
        stub = runner_pb2_grpc.RunnerLinkStub(channel)
        request = runner_pb2.FetchBundleRequest(runner_id=spec.runner_id, token=spec.token)
        chunks = [chunk.data async for chunk in stub.FetchBundle(request)]
    return b"".join(chunks)


def _channel(spec: RunnerSpec) -> aio.Channel:
    """A channel to the server as the shim dials it (TLS from the FALRT_TLS_* PEM the server
    gives runners; plaintext without)."""
    env = spec.env
    roots = env.get("FALRT_TLS_ROOTS_PEM", "")
    if not roots:
        return aio.insecure_channel(spec.server_address)
    credentials = grpc.ssl_channel_credentials(
        roots.encode(), env.get("FALRT_TLS_KEY_PEM", "").encode() or None,
        env.get("FALRT_TLS_CERT_PEM", "").encode() or None)
    name = env.get("FALRT_TLS_SERVER_NAME", "")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return aio.secure_channel(spec.server_address, credentials, options=options)


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock between the processes of this node (fcntl), taken in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)
