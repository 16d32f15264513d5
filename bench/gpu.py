"""A real model served by falrt, batched and unbatched, on a GPU when there is one.

    python bench/gpu.py [--quick] [--out bench/gpu.json] [--host-packages] [--runners-per-gpu K]

Starts one `falrt server`, deploys examples/embeddings.py (all-MiniLM-L6-v2) and
examples/mlp.py, and measures, at concurrency 1, 16 and 64 (closed loop, direct calls,
`Queue.Run`), p50 and p99 latency and requests per second of:

- `embed/batched`: the embedding example's `/embed` (dynamic batching, up to 32 requests
  per model call, 5 ms wait); the mean batch size the app reports is shown too;
- `embed/unbatched`: its `/embed-one` (one model call per request);
- `embed/batched-queue` with `--queue`: `/embed` through the queue (`Queue.Subscribe`);
- `mlp/unbatched`: examples/mlp.py (a 256-512-512-10 MLP, one call per request).

The targets of one section are measured in alternating rounds (bench/loadgen.py), so a slow
spell of a shared machine falls on all alike. While each target runs, NVML (nvidia-ml-py) is
sampled every 50 ms for the GPU's utilisation and memory in use; "n/a" without a GPU.

On a host without a GPU it runs a short CPU version (as `--quick`). examples/mlp.py is
deployed with GPU machine types first (falling back to "S"), like the embedding example.
`--runners-per-gpu K` serves the embedding example from K runners sharing its GPU (falrt's
`runners_per_gpu`; docs/runners.md), each its own process, so K cores feed the GPU.
`--host-packages` deploys both apps with no requirements, so that their runners use this
interpreter's packages: for a GPU machine that has CUDA torch and sentence-transformers but
no network (bench/gpu_run.sh); otherwise the server builds each app's environment from its
requirements (torch==2.13.0 from the package index; a minute or two the first time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import uvloop
from loadgen import (
    CALL_TIMEOUT_S,
    CHANNEL_OPTIONS,
    Call,
    CallFailed,
    Figures,
    Metadata,
    measure_interleaved,
    payload,
)
from servers import REPO, cli, deploy, falrt_server, first_success, guarded, machine

from falrt.client.credentials import metadata_for
from falrt.v1 import common_pb2, control_pb2, control_pb2_grpc, queue_pb2, queue_pb2_grpc

GPU_TYPES = '["GPU-H100", "GPU-H200", "GPU-A100", "GPU-L40", "S"]'
SENTENCES = [
    f"{subject} {verb} {thing} {place}."
    for subject in ("The old fisherman", "A young engineer", "My neighbour's dog",
                    "The committee")
    for verb in ("quietly repaired", "talked about", "could not find", "painted")
    for thing in ("the broken radio", "a red bicycle")
    for place in ("near the harbour", "after the storm")
]  # 64 distinct sentences of 8 to 10 words
MLP_BODY = json.dumps({"features": [((i * 37) % 101) / 101 for i in range(256)]}).encode()


class Plan:
    """How much to measure."""

    def __init__(self, args: argparse.Namespace, quick: bool) -> None:
        self.quick = quick
        self.levels: list[int] = args.concurrency
        self.calls: int = args.calls or (40 if quick else 400)
        self.rounds = 2 if quick else 5
        self.warmup = 1 if quick else 5
        self.cap_s = 10.0 if quick else 20.0  # per target and level (a round still ends
        # only when every worker's last call has answered)
        self.queue: bool = args.queue
        self.mlp: bool = not args.no_mlp

    def total(self, level: int) -> int:
        """Calls per target at `level`: at least one per worker and round."""
        return max(self.calls, level * self.rounds)

    def as_json(self) -> dict[str, Any]:
        return {"quick": self.quick, "concurrency": self.levels, "calls_per_level": self.calls,
                "rounds": self.rounds, "warmup_per_worker": self.warmup, "cap_s": self.cap_s}


# -- calls ----------------------------------------------------------------------------------


class Observed:
    """What the embedding app reported: batch sizes per target, and its device."""

    def __init__(self) -> None:
        self.batch_sizes: dict[str, list[int]] = {}
        self.device = ""

    def record(self, target: str, data: bytes) -> None:
        output = json.loads(data)
        self.batch_sizes.setdefault(target, []).append(int(output.get("batch_size", 1)))
        self.device = str(output.get("device", ""))

    def take_mean(self, target: str) -> float | None:
        sizes = self.batch_sizes.pop(target, [])
        return round(statistics.fmean(sizes), 2) if sizes else None


def run_call(
    channel: grpc.aio.Channel, endpoint_id: str, path: str, bodies: list[bytes],
    metadata: Metadata, on_output: Any = None,
) -> Call:
    """`Queue.Run` of `path`, cycling through `bodies`; `on_output(bytes)` sees each output."""
    stub = queue_pb2_grpc.QueueStub(channel)
    requests = [queue_pb2.RunRequest(endpoint_id=endpoint_id, path=path, input=payload(b))
                for b in bodies]
    counter = [0]

    async def call() -> None:
        counter[0] += 1
        reply = await stub.Run(requests[counter[0] % len(requests)], timeout=CALL_TIMEOUT_S,
                               metadata=metadata)
        if on_output is not None:
            on_output(reply.output.data)

    return call


def subscribe_call(
    channel: grpc.aio.Channel, endpoint_id: str, path: str, bodies: list[bytes],
    metadata: Metadata, on_output: Any = None,
) -> Call:
    """`Queue.Subscribe` of `path` until COMPLETED, cycling through `bodies`."""
    stub = queue_pb2_grpc.QueueStub(channel)
    requests = [queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
        endpoint_id=endpoint_id, path=path, input=payload(b))) for b in bodies]
    counter = [0]
    completed = common_pb2.REQUEST_STATUS_COMPLETED

    async def call() -> None:
        counter[0] += 1
        updates = stub.Subscribe(requests[counter[0] % len(requests)], timeout=CALL_TIMEOUT_S,
                                 metadata=metadata)
        try:
            async for update in updates:
                if update.state.status == completed:
                    if update.state.HasField("error"):
                        raise CallFailed(update.state.error.message)
                    if on_output is not None:
                        on_output(update.state.output.data)
                    return
        finally:
            updates.cancel()
        raise CallFailed("subscribe ended before COMPLETED")

    return call


# -- GPU sampling ---------------------------------------------------------------------------


class GpuSampler:
    """NVML utilisation and memory of GPU 0, sampled every 50 ms in a thread, filed under
    the target running at the time (`label`). Without NVML or a GPU: `name` is None."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.label = ""
        self._samples: dict[str, list[tuple[int, int]]] = {}
        self._stop = threading.Event()
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(self._handle)
                self.name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # no nvidia-ml-py, no driver, no GPU: n/a
            self._handle = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self._handle is None:
            yield
            return
        thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        import pynvml

        while not self._stop.wait(0.05):
            if not self.label:
                continue
            util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self._samples.setdefault(self.label, []).append((int(util), int(used)))

    def take(self, label: str) -> dict[str, float] | None:
        samples = self._samples.pop(label, [])
        if not samples:
            return None
        return {"util_mean_pct": round(statistics.fmean(s[0] for s in samples), 1),
                "util_max_pct": max(s[0] for s in samples),
                "memory_used_max_mib": round(max(s[1] for s in samples) / 2**20)}


def labelled(sampler: GpuSampler, label: str, call: Call) -> Call:
    async def wrapped() -> None:
        sampler.label = label
        await call()

    return wrapped


# -- the run --------------------------------------------------------------------------------


def app_variant(source: Path, tmp: Path, replacements: dict[str, str]) -> str:
    """A copy of an example with lines replaced (each must occur once); its deploy target."""
    text = source.read_text()
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise RuntimeError(f"{source}: expected one {old!r}")
        text = text.replace(old, new)
    copy = tmp / source.name
    copy.write_text(text)
    return str(copy)


async def measure_section(
    plan: Plan, sampler: GpuSampler, observed: Observed, calls: dict[str, Call],
) -> dict[str, dict[str, Any]]:
    """Every target at every level: figures, mean batch size, GPU samples."""
    calls = {name: labelled(sampler, name, call) for name, call in calls.items()}
    results: dict[str, dict[str, Any]] = {name: {} for name in calls}
    for level in plan.levels:
        figures = await measure_interleaved(calls, level, plan.total(level), warmup=plan.warmup,
                                            cap_s=plan.cap_s * len(calls), rounds=plan.rounds)
        sampler.label = ""
        for name, value in figures.items():
            results[name][str(level)] = {
                "figures": value, "mean_batch_size": observed.take_mean(name),
                "gpu": sampler.take(name),
            }
    return results


async def run_all(plan: Plan, args: argparse.Namespace, sampler: GpuSampler) -> dict[str, Any]:
    results: dict[str, Any] = {"devices": {}}
    with tempfile.TemporaryDirectory(prefix="falrt-bench-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "apps").mkdir()
        changes = {"    requirements = REQUIREMENTS\n": "    requirements: list[str] = []\n"
                   } if args.host_packages else {}
        if args.runners_per_gpu > 1:  # K runners, all started, sharing the GPU
            k = args.runners_per_gpu
            changes["    max_concurrency = 1\n"] = (
                f"    max_concurrency = {k}\n    min_concurrency = {k}\n"
                f"    runners_per_gpu = {k}\n")
        embeddings = (app_variant(REPO / "examples/embeddings.py", tmp / "apps", changes)
                      if changes else str(REPO / "examples/embeddings.py"))
        mlp_changes = {"    max_concurrency = 1\n":
                       f"    max_concurrency = 1\n    machine_type = {GPU_TYPES}\n"}
        if args.host_packages:
            mlp_changes['    requirements = ["torch==2.13.0"]\n'] = \
                "    requirements: list[str] = []\n"
        mlp = app_variant(REPO / "examples/mlp.py", tmp / "apps", mlp_changes)
        async with falrt_server(tmp / "data", tmp / "server.log") as address:
            key = metadata_for(address)
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                progress(f"embeddings: deploying examples/embeddings.py to {address} (the first "
                         "deploy builds its environment)")
                endpoint = await deploy(address, f"{embeddings}::Embeddings")
                observed = Observed()
                bodies = [json.dumps({"text": s}).encode() for s in SENTENCES]

                def seen(name: str) -> Any:
                    return lambda data: observed.record(name, data)

                calls = {
                    "batched": run_call(channel, endpoint, "/embed", bodies, key,
                                        seen("batched")),
                    "unbatched": run_call(channel, endpoint, "/embed-one", bodies, key,
                                          seen("unbatched")),
                }
                if plan.queue:
                    calls["batched-queue"] = subscribe_call(channel, endpoint, "/embed", bodies,
                                                            key, seen("batched-queue"))
                await first_success(calls["unbatched"], endpoint)
                results["devices"]["embed"] = observed.device
                observed.batch_sizes.clear()
                progress(f"embeddings: runner up on {observed.device}; measuring")
                results["embed"] = await measure_section(plan, sampler, observed, calls)
                if plan.mlp:
                    # a runner holds its GPU whole: the MLP gets it once the embeddings are gone
                    await cli(address, "apps", "delete", "embeddings")
                    await runners_gone(channel, key, "embeddings")
                    progress("mlp: deploying examples/mlp.py")
                    mlp_endpoint = await deploy(address, f"{mlp}::MLP")
                    mlp_calls = {"unbatched": run_call(channel, mlp_endpoint, "/", [MLP_BODY],
                                                       key, seen("mlp"))}
                    await first_success(mlp_calls["unbatched"], mlp_endpoint)
                    results["devices"]["mlp"] = observed.device
                    observed.batch_sizes.clear()
                    progress(f"mlp: runner up on {observed.device}; measuring")
                    results["mlp"] = await measure_section(plan, sampler, Observed(), mlp_calls)
    return results


async def runners_gone(channel: grpc.aio.Channel, metadata: Metadata, app: str) -> None:
    """Waits (60 s at most) until `app` has no runner left, so its GPUs are free."""
    stub = control_pb2_grpc.ControlStub(channel)
    deadline = time.monotonic() + 60
    request = control_pb2.ListRunnersRequest()  # all: a deleted app's name is unknown
    while any(r.app_name == app for r in (await stub.ListRunners(request,
                                                                  metadata=metadata)).runners):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the runners of {app} did not stop within 60 s")
        await asyncio.sleep(0.1)  # another process's state: nothing to wait on here


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


# -- reporting ------------------------------------------------------------------------------


def sections(results: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for section in ("embed", "mlp"):
        for target, levels in results.get(section, {}).items():
            for level, entry in levels.items():
                yield section, target, level, entry


def speedups(results: dict[str, Any]) -> dict[str, float]:
    """Batched over unbatched requests per second of the embedding example, per level."""
    embed = results.get("embed", {})
    out = {}
    for level, entry in embed.get("batched", {}).items():
        base = embed["unbatched"][level]["figures"].rps
        out[f"c{level}"] = round(entry["figures"].rps / base, 2) if base else float("nan")
    return out


def to_json(results: dict[str, Any], plan: Plan, sampler: GpuSampler) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": results["devices"], "gpu": sampler.name}
    for section, target, level, entry in sections(results):
        figures: Figures = entry["figures"]
        out.setdefault(section, {}).setdefault(target, {})[level] = {
            **figures.as_json(), "mean_batch_size": entry["mean_batch_size"],
            "gpu": entry["gpu"],
        }
    out["batched_over_unbatched_rps"] = speedups(results)
    out["machine"] = machine()
    out["plan"] = plan.as_json()
    return out


def print_table(results: dict[str, Any], sampler: GpuSampler) -> None:
    from rich.console import Console
    from rich.table import Table

    devices = ", ".join(f"{k} on {v}" for k, v in results["devices"].items())
    table = Table(title=f"falrt, a real model ({devices}; GPU: {sampler.name or 'n/a'})")
    for column in ("app", "target", "conc", "p50 ms", "p99 ms", "rps", "errors", "batch",
                   "GPU util %", "GPU MiB"):
        table.add_column(column, justify="left" if column in ("app", "target") else "right")
    for section, target, level, entry in sections(results):
        f: Figures = entry["figures"]
        gpu = entry["gpu"]
        batch = entry["mean_batch_size"]
        table.add_row(section, target, level, f"{f.p50_ms:.1f}", f"{f.p99_ms:.1f}",
                      f"{f.rps:.1f}", str(f.errors),
                      "" if batch is None or section == "mlp" else f"{batch:.1f}",
                      f"{gpu['util_mean_pct']:.0f}" if gpu else "n/a",
                      str(gpu["memory_used_max_mib"]) if gpu else "n/a")
    Console(width=120).print(table)
    ups = speedups(results)
    print("embed batched/unbatched rps: "
          + ", ".join(f"{level} {value:.2f}x" for level, value in ups.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description="a real model on falrt, batched and not")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (the default on a host without a GPU)")
    parser.add_argument("--full", action="store_true", help="the full run even without a GPU")
    parser.add_argument("--calls", type=int, help="calls per target and concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--queue", action="store_true",
                        help="also /embed through the queue (Queue.Subscribe)")
    parser.add_argument("--no-mlp", action="store_true", help="skip examples/mlp.py")
    parser.add_argument("--runners-per-gpu", type=int, default=1, metavar="K",
                        help="the embedding example with K runners sharing its GPU "
                             "(runners_per_gpu, min and max_concurrency K)")
    parser.add_argument("--host-packages", action="store_true",
                        help="deploy the apps without requirements: runners use this "
                             "interpreter's torch and model packages")
    args = parser.parse_args()
    sampler = GpuSampler()
    quick = args.quick or (sampler.name is None and not args.full)
    if quick and not args.quick:
        progress("no GPU here (NVML found none): the short CPU version")
    plan = Plan(args, quick)
    started = time.monotonic()
    try:
        with sampler.running():
            results = uvloop.run(guarded(run_all(plan, args, sampler)))
    except asyncio.CancelledError:
        sys.exit("interrupted; the servers it started were stopped")
    print_table(results, sampler)
    report = to_json(results, plan, sampler)
    report["total_s"] = round(time.monotonic() - started)
    progress(f"total {report['total_s']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
