"""What falrt does with a real GPU, checked on a host that has one (no GPU: it says so, exit 2).

    python bench/gpu_check.py [--backend process|ray] [--out FILE.json]

CI has no GPU: the allocator and the failure rules are tested there with an inventory file
and a stand-in exception (tests/test_gpus.py, tests/test_health.py). This script checks the
same behaviours against NVML, CUDA and torch on a lent GPU machine (bench/gpu_run.sh runs it
after bench/gpu.py), with one real `falrt server` and real runners using this interpreter's
torch:

1. NVML's inventory names the GPU and falrt maps it to a machine type.
2. A runner of a GPU machine type gets that GPU, whole: CUDA_VISIBLE_DEVICES is its UUID,
   torch sees one device of that name, and a matrix product on it agrees with the CPU's.
3. The runner's heartbeats carry NVML's figures: the runner list shows the GPU, and the
   memory its setup() holds (1 GiB) shows as used.
4. A second app asking for the same machine type waits, and says why ("no capacity for …").
5. A real `torch.OutOfMemoryError` in a handler stops that runner and retries the request on
   a new one, which gets the released GPU: the caller sees one success.

With `--backend ray` (needs falrt[ray]; bench/gpu_run.sh ray), the same server runs with
`--backend ray` on a one-node Ray cluster this script starts (`ray start --head --block` with
`--num-gpus N --resources '{"falrt-<machine type>": N}'`, stopped by signalling that process,
never by `ray stop`, which kills every Ray process of the host), and checks instead:

1'. NVML's inventory, as above.
2'. A runner of a GPU machine type placed by Ray gets one GPU: Ray's assignment reaches the
   handler as CUDA_VISIBLE_DEVICES (the GPU's UUID), torch.cuda.device_count() is 1, and
   NVML names the same device torch does; the runner list shows its node and that GPU.
3'. Heartbeats carry NVML's figures, as above.
4'. Ray's GPU accounting holds: asked for one runner more than the node has GPUs, Ray
   places as many as there are GPUs and the last one waits, unplaced, for a GPU.

Prints one line per check, a table and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # for tests.harness; falrt is the installed one

from falrt.client import SyncClient  # noqa: E402
from falrt.client.control import ControlClient  # noqa: E402
from falrt.gpus import Gpu, discover  # noqa: E402
from falrt.v1 import common_pb2  # noqa: E402
from tests.harness import ServerProcess, wait_for  # noqa: E402
from tests.test_failures import deploy_source, waiting_reason  # noqa: E402

RUNNER_STATES = common_pb2.RunnerState.values()[1:]  # all of them, TERMINATED included
ENDING = (common_pb2.RUNNER_STATE_DRAINING, common_pb2.RUNNER_STATE_TERMINATING,
          common_pb2.RUNNER_STATE_TERMINATED)

APP = '''
import os
from pathlib import Path

import msgspec
import torch
import falrt


class In(msgspec.Struct):
    marker: str = ""


class Out(msgspec.Struct):
    visible: str
    devices: int
    name: str
    runner: str
    max_error: float
    nvml_name: str = ""


def nvml_name(visible: str) -> str:
    """NVML's name for the device CUDA_VISIBLE_DEVICES names (a UUID or an index)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        first = visible.split(",")[0]
        handle = (pynvml.nvmlDeviceGetHandleByUUID(first) if first.startswith("GPU-")
                  else pynvml.nvmlDeviceGetHandleByIndex(int(first)))
        name = pynvml.nvmlDeviceGetName(handle)
        return name.decode() if isinstance(name, bytes) else str(name)
    finally:
        pynvml.nvmlShutdown()


class OnGpu(falrt.App):
    app_name = "{name}"
    machine_type = ["GPU-H200", "GPU-H100", "GPU-A100", "GPU-L40"]
    num_gpus = 1
    max_concurrency = 1
    keep_alive = 600
    requirements: list[str] = []

    def setup(self) -> None:
        self.held = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB, a model

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        a = torch.randn(512, 512)
        b = torch.randn(512, 512)
        on_gpu = (a.cuda() @ b.cuda()).cpu()
        return Out(visible=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                   devices=torch.cuda.device_count(), name=torch.cuda.get_device_name(0),
                   runner=os.environ["FALRT_RUNNER_ID"],
                   max_error=float((on_gpu - a @ b).abs().max()),
                   nvml_name=nvml_name(os.environ.get("CUDA_VISIBLE_DEVICES", "")))

    @falrt.endpoint("/oom")
    def oom(self, request: In) -> Out:
        marker = Path(request.marker)
        if not marker.exists():  # the first attempt only
            marker.write_text(os.environ["FALRT_RUNNER_ID"])
            torch.empty(2**44, dtype=torch.uint8, device="cuda")  # 16 TiB: no GPU has it
        return self.run(request)
'''


class Checks:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, check: Callable[[], str]) -> bool:
        started = time.monotonic()
        try:
            detail, ok = check(), True
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
            traceback.print_exc()
        seconds = round(time.monotonic() - started, 1)
        self.results.append({"check": name, "ok": ok, "seconds": seconds, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name} ({seconds} s): {detail}", flush=True)
        return ok

    def table(self) -> str:
        """The checks as a short table: result, seconds, check, the start of the detail."""
        rows = [f"{'PASS' if r['ok'] else 'FAIL':4}  {r['seconds']:>6}  {r['check'][:44]:44}  "
                f"{r['detail'][:70]}" for r in self.results]
        return "\n".join([f"{'':4}  {'s':>6}  {'check':44}  detail", *rows])


def deploy(server: ServerProcess, tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return deploy_source(server, tmp / name, "gpu_app", APP.format(name=name), "OnGpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the checks as JSON to this file")
    parser.add_argument("--backend", choices=["process", "ray"], default="process",
                        help="the server's backend (ray: on a one-node Ray cluster it starts)")
    args = parser.parse_args()
    gpus = discover()
    if not gpus:
        print("no GPU here (NVML lists none): nothing to check", file=sys.stderr)
        sys.exit(2)
    gpu = gpus[0]
    checks = Checks()

    def inventory() -> str:
        assert gpu.machine_type, f"{gpu.name} maps to no machine type"
        return (f"{len(gpus)} GPU(s); {gpu.name}, {gpu.memory_bytes / 2**30:.0f} GiB, "
                f"{gpu.uuid[:16]}… -> {gpu.machine_type}")

    if not checks.run("NVML inventory", inventory):
        sys.exit(1)
    with tempfile.TemporaryDirectory(prefix="falrt-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        if args.backend == "ray":
            on_ray(checks, gpus, tmp)
        else:
            server = ServerProcess(tmp / "data", tmp / "server.log").start()
            try:
                run_checks(checks, server, tmp, gpu.uuid, gpu.machine_type, gpu.name)
            finally:
                stop(server, checks)
    print(checks.table())
    failed = [r["check"] for r in checks.results if not r["ok"]]
    print(f"{len(checks.results) - len(failed)} of {len(checks.results)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.out:
        args.out.write_text(json.dumps({"gpu": gpu.name, "backend": args.backend,
                                        "checks": checks.results}, indent=2))
    sys.exit(1 if failed else 0)


def stop(server: ServerProcess, checks: Checks) -> None:
    server.stop()
    if not all(r["ok"] for r in checks.results):
        print("server log (end):\n" + server.log()[-4000:], file=sys.stderr)


def on_ray(checks: Checks, gpus: list[Gpu], tmp: Path) -> None:
    """The ray backend's checks (2'-4' of the docstring) on a one-node Ray cluster."""
    head, address = ray_head(gpus, tmp)
    try:
        server = ServerProcess(tmp / "data", tmp / "server.log", extra=[
            "--backend", "ray", "--ray-address", address]).start(timeout=120)
        try:
            run_ray_checks(checks, server, tmp, gpus)
        finally:
            stop(server, checks)
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
            head.wait()


def ray_head(gpus: list[Gpu], tmp: Path) -> tuple[subprocess.Popen[str], str]:
    """Starts a Ray head on this host with its GPUs and `falrt-<machine type>` for each;
    returns the `ray start --block` process and the GCS address, once Ray runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resources = {f"falrt-{gpus[0].machine_type}": len(gpus)}
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--num-gpus={len(gpus)}", "--num-cpus=4", f"--resources={json.dumps(resources)}",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp / 'ray'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert head.stdout is not None
    said = []
    for line in head.stdout:  # (it blocks once Ray runs, its stdout left open)
        said.append(line)
        if "Ray runtime started" in line:
            print(f"Ray head at 127.0.0.1:{port} with {len(gpus)} GPU(s), {resources}")
            return head, f"127.0.0.1:{port}"
    head.wait()
    raise RuntimeError(f"ray start exited {head.returncode}:\n{''.join(said)[-2000:]}")


def run_ray_checks(checks: Checks, server: ServerProcess, tmp: Path, gpus: list[Gpu]) -> None:
    gpu = gpus[0]
    state: dict[str, Any] = {}

    def one_gpu() -> str:
        endpoint = deploy(server, tmp, "gpu-check")
        with SyncClient(server.address) as client:
            out = client.run(endpoint, {}, timeout=300)
        state["runner"] = out["runner"]
        uuids = {g.uuid for g in gpus}
        assert out["visible"] in uuids, f"CUDA_VISIBLE_DEVICES={out['visible']!r}: not one GPU"
        assert out["devices"] == 1 and out["name"] == gpu.name, out
        assert out["nvml_name"] == out["name"], f"NVML: {out['nvml_name']}, torch: {out['name']}"
        with ControlClient(server.address) as control:
            (runner,) = [r for r in control.list_runners("gpu-check")
                         if r.runner_id == out["runner"]]
        assert list(runner.gpus) == [out["visible"]] and runner.node, runner
        return (f"runner {out['runner']} on {runner.node}: CUDA_VISIBLE_DEVICES="
                f"{out['visible'][:16]}…, torch sees {out['devices']} ({out['name']}), NVML "
                f"the same; GPU vs CPU max error {out['max_error']:.1e}")

    def heartbeats() -> str:
        with ControlClient(server.address) as control:
            def stats() -> Any:
                return next((r for r in control.list_runners("gpu-check") if r.gpu_stats
                             and r.gpu_stats[0].memory_used_bytes >= 2**30), None)

            runner = wait_for(stats, timeout=60, what="GPU stats with 1 GiB used")
        g = runner.gpu_stats[0]
        return (f"runner {runner.runner_id}: GPU {g.memory_used_bytes / 2**30:.2f} of "
                f"{g.memory_total_bytes / 2**30:.0f} GiB used")

    def accounting() -> str:
        wanted = len(gpus) + 1
        server.cli("apps", "scale", "gpu-check", "--max-concurrency", str(wanted),
                   "--min-concurrency", str(wanted))
        with ControlClient(server.address) as control:
            def settled() -> Any:
                listed = [r for r in control.list_runners("gpu-check")]
                placed = [r for r in listed if r.node]
                ready = [r for r in placed if r.state == common_pb2.RUNNER_STATE_IDLE]
                return listed if len(listed) == wanted and len(ready) == len(gpus) else None

            listed = wait_for(settled, timeout=240, what=f"{len(gpus)} idle runners")
        waiting = [r for r in listed if not r.node]
        held = sorted(g for r in listed for g in r.gpus)
        server.cli("apps", "scale", "gpu-check", "--min-concurrency", "0")
        assert len(waiting) == 1 and held == sorted(g.uuid for g in gpus), (waiting, held)
        return (f"{wanted} runners asked: {len(gpus)} placed, one GPU each, and "
                f"{waiting[0].runner_id} waits for Ray to free one")

    if checks.run("a Ray runner gets exactly one GPU", one_gpu):
        checks.run("heartbeats carry NVML's figures (ray)", heartbeats)
        checks.run("Ray's GPU accounting: the runner past the GPUs waits", accounting)


def run_checks(checks: Checks, server: ServerProcess, tmp: Path, uuid: str,
               machine_type: str, name: str) -> None:
    state: dict[str, Any] = {}

    def whole_gpu() -> str:
        endpoint = deploy(server, tmp, "gpu-check")
        with SyncClient(server.address) as client:
            out = client.run(endpoint, {}, timeout=300)
        state["endpoint"], state["runner"] = endpoint, out["runner"]
        assert out["visible"] == uuid, f"CUDA_VISIBLE_DEVICES={out['visible']!r}, not {uuid}"
        assert out["devices"] == 1 and out["name"] == name, out
        assert out["max_error"] < 1e-2, f"GPU and CPU products differ by {out['max_error']}"
        return (f"runner {out['runner']} sees {out['devices']} device ({out['name']}) as "
                f"{out['visible'][:16]}…; GPU vs CPU 512x512 product max error "
                f"{out['max_error']:.1e}")

    def heartbeats() -> str:
        with ControlClient(server.address) as control:
            def stats() -> Any:
                runners = control.list_runners("gpu-check")
                return next((r for r in runners if r.gpu_stats
                             and r.gpu_stats[0].memory_used_bytes >= 2**30), None)

            runner = wait_for(stats, timeout=60, what="GPU stats with 1 GiB used")
        assert list(runner.gpus) == [uuid] and runner.machine_type == machine_type, runner
        g = runner.gpu_stats[0]
        return (f"runner {runner.runner_id}: machine type {runner.machine_type}, GPU "
                f"{g.memory_used_bytes / 2**30:.2f} of {g.memory_total_bytes / 2**30:.0f} GiB "
                f"used, {g.utilization_percent}% busy")

    def no_capacity() -> str:
        endpoint = deploy(server, tmp, "gpu-second")
        with SyncClient(server.address) as client:
            handle = client.submit(endpoint, {})
            why = waiting_reason(client, handle.request_id)
            client.cancel(handle.request_id)
        server.cli("apps", "delete", "gpu-second")
        assert f"no capacity for {machine_type}" in why, why
        return f"the second app's request waits: {why!r}"

    def out_of_memory() -> str:
        marker = tmp / "oom-marker"
        started = time.monotonic()
        with SyncClient(server.address) as client:
            done = client.wait(client.submit(state["endpoint"], {"marker": str(marker)},
                                             path="/oom").request_id, timeout=300)
        took = time.monotonic() - started
        assert done.error is None, done.error
        first = marker.read_text()
        assert first == state["runner"] and done.output["runner"] != first, (first, done.output)
        with ControlClient(server.address) as control:
            listed = control.list_runners("gpu-check", states=list(RUNNER_STATES))
        ended = next(r for r in listed if r.runner_id == first)
        assert ended.state in ENDING, common_pb2.RunnerState.Name(ended.state)
        return (f"attempt 1 on {first} ran out of GPU memory; that runner is "
                f"{common_pb2.RunnerState.Name(ended.state)} "
                f"({ended.last_error[:100] or 'no error'}); the retry ran on "
                f"{done.output['runner']} with the same GPU; {took:.1f} s in all")

    if checks.run("a runner gets its GPU whole", whole_gpu):
        checks.run("heartbeats carry NVML's figures", heartbeats)
        checks.run("no capacity is reported, not crash-looped", no_capacity)
        checks.run("CUDA out of memory: runner replaced, request retried", out_of_memory)


if __name__ == "__main__":
    main()
