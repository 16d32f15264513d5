"""What falrt adds to a call, measured next to bare servers in one run on one machine.

    python bench/overhead.py [--quick] [--out bench/overhead.json]

Two sections, each at concurrency 1 and 16 (p50, p99, requests per second; a fixed number of
calls per level after a warm-up):

- echo: a bare grpc.aio echo server (generic unary handler on bytes, uvloop) against
  examples/noop.py deployed on a real `falrt server`, called directly (`Queue.Run`) and
  through the queue (`Queue.Submit`, then `Queue.Watch` until COMPLETED).
- mlp: a bare grpc.aio server running examples/mlp.py's model in-process against
  examples/mlp.py deployed on the same falrt server. Needs torch in this interpreter
  (`pip install -e '.[torch]'`); skipped otherwise.

A raw asyncio HTTP/1.1 server doing the same work is measured too, for reference (`http_raw`).
Every server runs in its own process; the client is this process (uvloop, one grpc.aio
channel per target, the generated stubs). In both sections the bare gRPC server's key is
`grpc_echo`, so that the JSON has the same keys everywhere; the ratios divide falrt's p50 by
it. Absolute numbers drift on shared machines; ratios from one run do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop
from loadgen import (
    CHANNEL_OPTIONS,
    Call,
    Figures,
    HttpConnections,
    falrt_direct_call,
    falrt_queue_call,
    grpc_bytes_call,
    measure_interleaved,
)

REPO = Path(__file__).resolve().parents[1]
BASELINES = Path(__file__).resolve().parent / "baselines.py"
ECHO_METHOD = "/bench.Echo/Call"
NOOP_BODY = b'{"value": 1}'
MLP_BODY = json.dumps({"features": [((i * 37) % 101) / 101 for i in range(256)]}).encode()
START_DEADLINE_S = 120.0
DEPLOY_DEADLINE_S = 300.0  # building the mlp app's environment may install torch
RUNNER_DEADLINE_S = 300.0  # the mlp app's first runner may build its environment
TARGETS_ECHO_C1 = {"falrt_direct": 3.0, "falrt_queue": 6.0}


class Plan:
    """How much to measure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.levels: list[int] = args.concurrency
        self.calls: int = args.calls or (300 if args.quick else 1500)
        self.warmup: int = 10 if args.quick else 50
        self.cap_s: float = 5.0 if args.quick else 12.0
        self.http: bool = not args.no_http
        self.mlp: bool = not args.no_mlp

    async def run(self, calls: dict[str, Call]) -> dict[str, dict[str, Figures]]:
        """Figures per target, then per concurrency level (as strings)."""
        results: dict[str, dict[str, Figures]] = {name: {} for name in calls}
        for level in self.levels:
            figures = await measure_interleaved(
                calls, level, self.calls, warmup=self.warmup, cap_s=self.cap_s * len(calls)
            )
            for name, value in figures.items():
                results[name][str(level)] = value
        return results


# -- processes ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def process(argv: list[str], ready: str, log: Path) -> AsyncIterator[re.Match[str]]:
    """Runs `argv` (output to `log`) until the block ends; yields the match of the `ready`
    pattern in its output. SIGTERM at the end, SIGKILL if it lingers."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield await _wait_for_line(proc, re.compile(ready), log)
    finally:
        await _stop(proc)


async def _wait_for_line(
    proc: asyncio.subprocess.Process, pattern: re.Pattern[str], log: Path
) -> re.Match[str]:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return match
        with contextlib.suppress(TimeoutError):
            # Waiting on the process itself: an early exit ends the wait at once.
            await asyncio.wait_for(proc.wait(), timeout=0.05)
            raise RuntimeError(f"{log.name}: process exited ({proc.returncode}):\n"
                               + log.read_text(errors="replace")[-3000:])
    raise RuntimeError(f"{log.name}: not ready within {START_DEADLINE_S:.0f} s")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def falrt_cli(*args: str) -> list[str]:
    """The `falrt` command on this interpreter, so that the server and its runners use it too
    (with torch, when this interpreter has it)."""
    return [sys.executable, "-c", "from falrt.cli.main import main; main()", *args]


async def deploy(address: str, target: str) -> str:
    """Deploys `target` with the CLI; the endpoint id it prints."""
    proc = await asyncio.create_subprocess_exec(
        *falrt_cli("deploy", target), cwd=REPO, env={**os.environ, "FALRT_HOST": address},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEPLOY_DEADLINE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"falrt deploy {target}: no answer within "
                           f"{DEPLOY_DEADLINE_S:.0f} s") from None
    lines = out.decode().split()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"falrt deploy {target} failed:\n{err.decode()[-3000:]}")
    return lines[-1]


async def first_success(call: Call, what: str) -> None:
    """Calls until one call succeeds (the first starts a runner)."""
    deadline = time.monotonic() + RUNNER_DEADLINE_S
    while True:
        try:
            await call()
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no successful call within "
                                   f"{RUNNER_DEADLINE_S:.0f} s") from None


# -- the sections ---------------------------------------------------------------------------


async def measure_section(
    plan: Plan, kind: str, body: bytes, tmp: Path, address: str, target: str
) -> dict[str, Any]:
    """Every target of one section ("echo" or "mlp"), all up at once, measured interleaved:
    the bare grpc.aio server (`grpc_echo`), raw HTTP (`http_raw`), and the falrt app `target`
    on the server at `address` called directly (`falrt_direct`) and through the queue
    (`falrt_queue`)."""
    endpoint_id = await deploy(address, target)
    argv = [sys.executable, str(BASELINES), f"grpc-{kind}"]
    async with contextlib.AsyncExitStack() as stack:
        ready = await stack.enter_async_context(
            process(argv, r"listening on (\d+)", tmp / f"grpc-{kind}.log"))
        bare = await stack.enter_async_context(grpc.aio.insecure_channel(
            f"127.0.0.1:{ready.group(1)}", options=CHANNEL_OPTIONS))
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
        calls = {"grpc_echo": grpc_bytes_call(bare, ECHO_METHOD, body)}
        if plan.http:
            http = await stack.enter_async_context(
                process([*argv[:-1], f"http-{kind}"], r"listening on (\d+)",
                        tmp / f"http-{kind}.log"))
            connections = HttpConnections(int(http.group(1)))
            stack.push_async_callback(connections.close)
            calls["http_raw"] = connections.call(body)
        calls["falrt_direct"] = falrt_direct_call(channel, endpoint_id, body)
        calls["falrt_queue"] = falrt_queue_call(channel, endpoint_id, body)
        await first_success(calls["falrt_direct"], endpoint_id)
        return await plan.run(calls)


async def run_guarded(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """`run_all`, cancelled by SIGTERM or SIGINT so that every server it started is stopped."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await run_all(plan, progress)


async def run_all(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="falrt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server_argv = falrt_cli("server", "--listen", "127.0.0.1:0", "--data-dir",
                                str(tmp / "data"))
        pattern = r"falrt server listening on (\S+)"
        async with process(server_argv, pattern, tmp / "server.log") as ready:
            address = ready.group(1)
            progress(f"echo: bare servers and examples/noop.py on falrt at {address}")
            results["echo"] = await measure_section(plan, "echo", NOOP_BODY, tmp, address,
                                                    "examples/noop.py::Noop")
            if plan.mlp:
                progress("mlp: bare servers and examples/mlp.py (the first runner may build "
                         "its environment)")
                results["mlp"] = await measure_section(plan, "mlp", MLP_BODY, tmp, address,
                                                       "examples/mlp.py::MLP")
    return results


# -- reporting ------------------------------------------------------------------------------


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """falrt p50 / bare gRPC p50 per section and concurrency, and the issue's targets."""
    out: dict[str, Any] = {}
    for section, targets in results.items():
        base = targets["grpc_echo"]
        for name in ("falrt_direct", "falrt_queue"):
            for level, figures in targets.get(name, {}).items():
                out[f"{section}.{name}.c{level}.p50_ratio"] = _ratio(
                    figures.p50_ms, base[level].p50_ms)
                out[f"{section}.{name}.c{level}.p50_added_ms"] = round(
                    figures.p50_ms - base[level].p50_ms, 3)
    echo = results["echo"]
    out["targets"] = {
        f"echo.{name}.c1.p50_ratio<={limit:g}": bool(
            out.get(f"echo.{name}.c1.p50_ratio", math.inf) <= limit)
        for name, limit in TARGETS_ECHO_C1.items() if "1" in echo.get(name, {})
    }
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else math.nan


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
        info["mlp_device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def to_json(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    plain = {
        section: {name: {lvl: f.as_json() for lvl, f in levels.items()}
                  for name, levels in targets.items()}
        for section, targets in results.items()
    }
    return {
        # The echo section's figures, also at the top level as the issue names them.
        **{name: plain["echo"][name] for name in ("grpc_echo", "falrt_direct", "falrt_queue")
           if name in plain["echo"]},
        **plain,
        "ratios": ratios(results),
        "machine": machine(),
        "plan": {"concurrency": plan.levels, "calls_per_level": plan.calls,
                 "warmup_per_worker": plan.warmup, "cap_s_per_level": plan.cap_s},
    }


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="falrt overhead (p50 ratio: against grpc_echo of the same section)")
    for column in ("section", "target", "conc", "p50 ms", "p99 ms", "rps", "errors", "p50 ratio"):
        table.add_column(column, justify="left" if column in ("section", "target") else "right")
    for section, targets in results.items():
        for name, levels in targets.items():
            for level, f in levels.items():
                base = targets["grpc_echo"][level].p50_ms
                table.add_row(section, name, level, f"{f.p50_ms:.3f}", f"{f.p99_ms:.3f}",
                              f"{f.rps:.0f}", str(f.errors), f"{_ratio(f.p50_ms, base):.2f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description="falrt overhead next to bare servers")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--calls", type=int, help="calls per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--no-http", action="store_true", help="skip the raw HTTP reference")
    parser.add_argument("--no-mlp", action="store_true", help="skip the mlp section")
    args = parser.parse_args()
    plan = Plan(args)
    if plan.mlp and importlib.util.find_spec("torch") is None:
        print("torch is not installed here: skipping the mlp section "
              "(pip install -e '.[torch]' to measure it)", file=sys.stderr)
        plan.mlp = False
    started = time.monotonic()
    try:
        results = uvloop.run(run_guarded(plan, lambda s: print(f"-- {s}", file=sys.stderr)))
    except asyncio.CancelledError:
        sys.exit("interrupted; the servers it started were stopped")
    print_table(results)
    report = to_json(results, plan)
    print(json.dumps(report["ratios"], indent=2))
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
