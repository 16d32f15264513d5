"""The `ray` backend: every runner is placed by Ray on a node of a Ray cluster.

`falrt server --backend ray --ray-address ADDRESS --advertise HOST:PORT` connects the server
to a Ray cluster as a driver (`auto`: the cluster this host is a node of; `HOST:6379`: a
cluster's GCS, from a Ray node; `ray://HOST:10001`: Ray Client, from anywhere; docs/scaling.md
says which to choose). Each runner is one Ray actor (`falrt.backends.ray_node.NodeRunner`)
asking for its machine type's resources:

- the custom resource `falrt-<MACHINE_TYPE>`, one unit per runner, which operators give
  the nodes that should serve the type (`ray start --resources '{"falrt-S": 4}'`);
- for a CPU tier, its CPUs and memory (falrt/machines.py); for a GPU type, `num_gpus` GPUs
  (at least one) and no CPU, so that the GPUs and `falrt-<type>` bind.

The actor prepares the runner on its node (the bundle fetched from the server, the
environment built there) and runs the shim, which dials the server at its advertised
address over the usual runner link. Its output comes back into the runner's log file on the
server. An actor that dies (its node died, or Ray killed it) is a runner that exited with
status -1; the runner link has seen it go already, and the fleet's usual rules retry its
requests and replace it.

Capacity (`capacity`) is answered from Ray's view of its nodes, refreshed every
`REFRESH_S` off the event loop: a machine type that no live node could ever host is "no
capacity for ..."; one that some node could host but is busy is left to Ray, which starts
the runner when resources free up (the request waits meanwhile). When the cluster has not
answered for `UNREACHABLE_S` (its head is down), no machine type has capacity, and the
reason says so: requests wait, with that reason, and the server serves on.

Every Ray call that may block runs in a thread (asking for a result too: through Ray Client
it waits while the client reconnects); results are awaited as futures. The `ray` module's
auto-connect is off (`import_ray`).
Runners are actors of the server's Ray job: they end when the server's driver disconnects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from falrt import machines
from falrt.backends.base import RunnerProcess, RunnerSpec, Survivor
from falrt.backends.ray_node import Exited, NodeEvent, NodeRunner, Output, Placed
from falrt.gpus import GpuShare

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "falrt-"
REFRESH_S = 2.0
# After this long without an answer from the cluster, it is reported unreachable.
UNREACHABLE_S = 15.0
NAMESPACE = "falrt"
CONNECT_ATTEMPTS = 3
PLACEMENT_ATTEMPTS = 3
# How long a killed runner's end may take to come back through its actor before the runner
# counts as ended anyway (its cluster is out of reach).
KILL_CONFIRM_S = 15.0
INSTALL_HINT = "the ray backend needs Ray on the server: pip install 'falrt[ray]'"


def resources(machine_type: str, num_gpus: int, share: GpuShare | None = None) -> dict[str, float]:
    """What one runner of `machine_type` asks Ray for (Ray's names: CPU, GPU, memory). A
    runner sharing its GPU among K asks for 1/K of one (Ray's fractional GPUs; Ray does not
    keep another app off the GPU as the process and docker backends do)."""
    tier = machines.CPU_TIERS.get(machine_type)
    if tier is not None:
        return {f"{RESOURCE_PREFIX}{machine_type}": 1.0, "CPU": tier.cpus,
                "memory": float(tier.memory_bytes)}
    if share is not None and share.runners > 1:
        part = 1.0 / share.runners
        return {f"{RESOURCE_PREFIX}{machine_type}": part, "CPU": 0.0, "GPU": part}
    return {f"{RESOURCE_PREFIX}{machine_type}": 1.0, "CPU": 0.0, "GPU": float(max(1, num_gpus))}


def missing(need: dict[str, float], nodes: list[dict[str, float]], machine_type: str) -> str:
    """"" when one of the nodes (their total resources) can host a runner needing `need`,
    else why not. Pure: `capacity`'s rule."""
    if any(all(node.get(name, 0.0) >= amount for name, amount in need.items())
           for node in nodes):
        return ""
    wanted = ", ".join(f"{name} {amount:g}" for name, amount in need.items() if amount)
    return (f"no capacity for {machine_type}: no node of the Ray cluster has {wanted} (give "
            f"the nodes that should serve it the resource: ray start --resources "
            f"'{{\"{RESOURCE_PREFIX}{machine_type}\": N}}')")


def unreachable(address: str, since_s: float, error: str) -> str:
    """Why nothing can start while the cluster does not answer. Pure."""
    return (f"no capacity: the Ray cluster at {address} has not answered for {since_s:.0f} s "
            f"(is its head down?){f': {error}' if error else ''}")


def import_ray() -> Any:
    """The `ray` module, with its auto-connect off. Raises ValueError saying how to
    install it."""
    try:
        import ray
        from ray._private import auto_init_hook
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    # Else a Ray call made once the connection is lost (a Ray Client whose head went)
    # calls ray.init() with no address: it blocks on whatever cluster this host knows, and
    # once connected is a driver of its own, which Ray ends the whole process with.
    auto_init_hook.enable_auto_connect = False
    return ray


class RayRunner:
    """A runner's actor, followed from the server: its events go to the runner's log, its
    node and GPUs are recorded, its end is the runner's exit. Loop-affine."""

    def __init__(self, ray: Any, create: Callable[[], Any], spec: RunnerSpec) -> None:
        self._ray = ray
        self._create = create  # a new actor, started (blocking)
        self._actor: Any = None
        self._spec = spec
        self._node = ""
        self._gpus: list[str] = []
        self._exit_reason = ""
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def node(self) -> str:
        return self._node

    @property
    def gpus(self) -> list[str]:
        return list(self._gpus) if not self._exited.done() else []

    @property
    def exit_code(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    @property
    def exit_reason(self) -> str:
        return self._exit_reason

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM, group=False)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, group=True)

    def _signal(self, number: signal.Signals, group: bool) -> None:
        """Through the actor once it is placed; before that, the actor is removed (nothing
        of the runner runs yet). Idempotent; nothing once it has exited."""
        if self._exited.done():
            return
        if not self._node:
            self.end_unplaced("stopped before Ray placed it", -int(number))
            return
        loop = asyncio.get_running_loop()
        sent = loop.run_in_executor(None, lambda: self._actor.signal.remote(int(number), group))
        sent.add_done_callback(functools.partial(self._undelivered, number))
        if number is signal.SIGKILL:
            loop.call_later(KILL_CONFIRM_S, self._unconfirmed)

    def _undelivered(self, number: signal.Signals, sent: asyncio.Future[Any]) -> None:
        """A signal Ray could not take (its cluster cannot be reached: a Ray Client that
        lost its head). Nothing of Ray will tell this runner's end any more, so a kill ends
        it here, and the server's stop does not wait for it forever."""
        if sent.cancelled() or (exc := sent.exception()) is None or self._exited.done():
            return
        log.warning("runner %s: Ray did not take its %s: %s", self._spec.runner_id,
                    number.name, _first_line(exc))
        if number is signal.SIGKILL:
            self._exit_reason = f"its Ray cluster cannot be reached: {_first_line(exc)}"
            self._exited.set_result(-int(number))

    def _unconfirmed(self) -> None:
        """A kill Ray has not confirmed in KILL_CONFIRM_S (the runner's end never came back
        through its actor): the runner counts as ended, so that nothing, the server's stop
        included, waits for it forever."""
        if self._exited.done():
            return
        self._exit_reason = (f"killed, but Ray did not confirm its end within "
                             f"{KILL_CONFIRM_S:g} s (can its cluster be reached?)")
        log.warning("runner %s: %s", self._spec.runner_id, self._exit_reason)
        self._exited.set_result(-int(signal.SIGKILL))

    def end_unplaced(self, reason: str, code: int) -> None:
        """Ends the runner if Ray has not placed it (nothing of it runs): its actor is
        removed, and its exit is known at once, since a cluster that cannot be reached
        would never tell it. Nothing once it is placed or has exited."""
        if self._node or self._exited.done():
            return
        self._exit_reason = reason
        self._exited.set_result(code)
        asyncio.get_running_loop().run_in_executor(None, self._remove)

    def _remove(self) -> None:
        with contextlib.suppress(Exception):  # (gone already)
            self._ray.kill(self._actor, no_restart=True)

    async def follow(self) -> None:
        """Reads the actor's events until the runner exits, then removes the actor (its
        resources are free again) and resolves the exit. Never raises but CancelledError."""
        code = -1
        try:
            log_file = await asyncio.to_thread(_open_log, self._spec.log_path)
            try:
                code = await self._place_and_consume(log_file)
            finally:
                log_file.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the actor died: its node, or its worker process
            self._exit_reason = self._exit_reason or (
                f"its Ray actor died (its node was lost?): {_first_line(exc)}")
            log.warning("runner %s: %s", self._spec.runner_id, self._exit_reason)
        finally:
            await asyncio.to_thread(self._remove)
            if not self._exited.done():
                self._exited.set_result(code)

    async def _place_and_consume(self, log_file: BinaryIO) -> int:
        """Creates the actor and follows it. An actor that dies before it is placed is made
        again (up to PLACEMENT_ATTEMPTS): Ray may place it on a node that died but is not
        known dead yet (its GCS takes a few heartbeats to tell), and nothing of the runner
        ran."""
        for attempt in range(1, PLACEMENT_ATTEMPTS + 1):
            if self._exit_reason:  # stopped before its actor was made
                return -1
            self._actor = await asyncio.to_thread(self._create)
            if self._exit_reason:  # ... or while it was made
                await asyncio.to_thread(self._remove)
            try:
                return await self._consume(log_file)
            except Exception as exc:
                if self._node or self._exit_reason or attempt == PLACEMENT_ATTEMPTS:
                    raise
                log.warning("runner %s: its actor died before it was placed (%s); placing "
                            "it again", self._spec.runner_id, _first_line(exc))
        raise AssertionError("unreachable")

    async def _consume(self, log_file: BinaryIO) -> int:
        """Long polls of the actor's events (each acknowledges the batch before it) until
        `Exited`; its status. (`.remote()` runs in a thread: through Ray Client it is a
        blocking call.)"""
        seen = 0
        while True:
            batch: list[NodeEvent] = await asyncio.wrap_future(
                await asyncio.to_thread(self._events_future, seen))
            seen += len(batch)
            output = b"".join(e.data for e in batch if isinstance(e, Output))
            if output:
                await asyncio.to_thread(log_file.write, output)
            for event in batch:
                match event:
                    case Placed(node=node, gpus=gpus):
                        self._node, self._gpus = node, gpus
                        log.info("runner %s placed on %s", self._spec.runner_id, node)
                    case Output():
                        pass  # (written above)
                    case Exited(code=code, reason=reason):
                        self._exit_reason = reason
                        return code
                    case _:
                        raise AssertionError(f"unexpected event {event!r}")

    def _events_future(self, seen: int) -> concurrent.futures.Future[list[NodeEvent]]:
        """The next long poll of the actor's events, as a future. Blocking: through Ray
        Client, asking for the result is a call on the client's channel, which waits while
        the client reconnects (kept off the event loop)."""
        future: concurrent.futures.Future[list[NodeEvent]] = (
            self._actor.events.remote(seen).future())
        return future


class RayBackend:
    """Places runners on the Ray cluster at `address`; `cache_dir`: where each node caches
    bundles and environments ("": `$TMPDIR/falrt-ray` of the node). See the module
    docstring."""

    keeps_runners = False  # they are actors of the server's Ray job

    def __init__(self, address: str, cache_dir: str = "") -> None:
        self._ray = import_ray()
        self._address = address or "auto"
        self._cache_dir = cache_dir
        self._actor_class: Any = None
        self._nodes: list[dict[str, float]] = []  # the live nodes' total resources
        self._answered_at = 0.0  # (monotonic) when the cluster last told its nodes
        self._error = ""  # why the last refresh failed ("" when it did not)
        self._refresher: asyncio.Task[None] | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self._runners: set[RayRunner] = set()  # those followed

    async def open(self) -> None:
        """Connects to the cluster (in a thread) and takes its first view of the nodes;
        then keeps it fresh. Idempotent. Raises ValueError when Ray cannot connect."""
        if self._refresher is not None:
            return
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self._connect)
                break
            except Exception as exc:
                if attempt == CONNECT_ATTEMPTS:
                    raise ValueError(
                        f"cannot connect to the Ray cluster at {self._address} (--ray-address:"
                        f" auto, HOST:6379 or ray://HOST:10001; docs/scaling.md): "
                        f"{_first_line(exc)}") from None
                # Ray Client's proxy sometimes fails to start the client's own server
                # ("Initialization failure from server"); a new connection gets another.
                log.warning("connecting to Ray at %s failed (%s); trying again",
                            self._address, _first_line(exc))
                await asyncio.to_thread(self._ray.shutdown)
        self._nodes = await asyncio.to_thread(self._live_nodes)
        self._answered_at = time.monotonic()
        log.info("Ray cluster at %s: %d live nodes", self._address, len(self._nodes))
        self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    def _connect(self) -> None:
        self._ray.init(address=self._address, namespace=NAMESPACE, log_to_driver=False,
                       logging_level=logging.WARNING, ignore_reinit_error=True)
        self._actor_class = self._ray.remote(NodeRunner)

    def _live_nodes(self) -> list[dict[str, float]]:
        return [dict(node.get("Resources", {})) for node in self._ray.nodes()
                if node.get("Alive")]

    async def _refresh(self) -> None:
        """Ray's view of its nodes, every REFRESH_S (a failure keeps the last view, and
        how long the cluster has not answered counts on, also while a read hangs: Ray
        waits up to a minute for a GCS that is gone)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            reading = asyncio.ensure_future(asyncio.to_thread(self._live_nodes))
            try:
                while not reading.done():
                    await asyncio.wait({reading}, timeout=REFRESH_S)
                    self._give_up_waiting()
                self._nodes = reading.result()
            except asyncio.CancelledError:
                reading.cancel()
                raise
            except Exception as exc:
                self._error = _first_line(exc)
                log.warning("cannot read the Ray cluster's nodes: %s", self._error)
                self._give_up_waiting()
                continue
            if self._error or self._silent_s() > UNREACHABLE_S:
                log.warning("the Ray cluster at %s answers again", self._address)
            self._answered_at, self._error = time.monotonic(), ""

    def _give_up_waiting(self) -> None:
        """Once the cluster is unreachable, the runners waiting for Ray to place them end
        as failed starts, saying why; the next starts then wait with the same reason."""
        if self._silent_s() <= UNREACHABLE_S:
            return
        reason = unreachable(self._address, self._silent_s(), self._error)
        for runner in list(self._runners):
            runner.end_unplaced(reason, -1)

    def _silent_s(self) -> float:
        return time.monotonic() - self._answered_at

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        if self._silent_s() > UNREACHABLE_S:
            return unreachable(self._address, self._silent_s(), self._error)
        return missing(resources(machine_type, num_gpus, share), self._nodes, machine_type)

    async def fetch(self, spec: RunnerSpec, pulling: Callable[[], None]) -> None:
        return None  # the runner's actor fetches its bundle and environment on its node

    async def start(self, spec: RunnerSpec) -> RunnerProcess:
        """Creates the runner's actor (Ray places it when a node has room) and follows it;
        returns at once."""
        runner = RayRunner(self._ray, functools.partial(self._create, spec), spec)
        task = asyncio.get_running_loop().create_task(runner.follow())
        self._followers.add(task)
        self._runners.add(runner)
        task.add_done_callback(self._followers.discard)
        task.add_done_callback(lambda _: self._runners.discard(runner))
        return runner

    def _create(self, spec: RunnerSpec) -> Any:
        """The runner's actor, started. Blocking (Ray may talk to its GCS)."""
        need = resources(spec.machine_type, spec.num_gpus, spec.gpu_share)
        custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {"num_cpus": need["CPU"], "num_gpus": need.get("GPU", 0.0),
                                   "resources": custom, "max_restarts": 0}
        if "memory" in need:
            options["memory"] = int(need["memory"])
        actor = self._actor_class.options(**options).remote(self._cache_dir)
        actor.start.remote(spec)
        return actor

    async def survivors(self, log_path: Callable[[str], Path]) -> list[Survivor]:
        return []  # its runners ended with the previous server's Ray job

    async def close(self) -> None:
        """Stops following runners and disconnects from Ray (its actors of this server end
        with the job). Idempotent."""
        tasks = [t for t in (self._refresher, *self._followers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = None
        if self._actor_class is not None:
            self._actor_class = None
            await asyncio.to_thread(self._ray.shutdown)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", buffering=0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
