"""What falrt adds to a call, measured next to bare servers in one run on one machine.

    python bench/overhead.py [--quick] [--out bench/overhead.json]
    python bench/overhead.py --metrics [--quick] [--out bench/metrics.json]

Two sections, each at concurrency 1 and 16 (p50, p99, requests per second; a fixed number of
calls per level after a warm-up):

- echo: a bare grpc.aio echo server (generic unary handler on bytes, uvloop) against
  examples/noop.py deployed on a real `falrt server`, called directly (`Queue.Run`) and
  through the queue (`Queue.Submit`, then `Queue.Watch` until COMPLETED).
- mlp: a bare grpc.aio server running examples/mlp.py's model in-process against
  examples/mlp.py deployed on the same falrt server. Needs torch in this interpreter
  (`pip install -e '.[torch]'`); skipped otherwise.

`--metrics` measures instead what Prometheus metrics and traces cost the hot path: two falrt
servers run at once, one with metrics (the default) and tracing on with no exporter
(`--tracing`: every request's spans are made, none sent) and one with `--no-metrics` and
no tracing, each serving
examples/noop.py, and their direct and queue calls are measured interleaved next to the bare
grpc.aio echo (section `metrics`; targets `falrt_direct`, `falrt_queue` with metrics and
`falrt_direct_off`, `falrt_queue_off` without). The server with metrics is scraped (its
/metrics read, as Prometheus would) once a second throughout. The ratios compare each path's
p50 with metrics on to the same with them off. `--metrics-control` runs the same with metrics
off on both servers (an A/A run): the spread of its ratios around 1 is the noise the
on/off ratios must be read against.

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
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import uvloop
from baselines import ECHO_METHOD
from loadgen import (
    CHANNEL_OPTIONS,
    Call,
    Figures,
    HttpConnections,
    falrt_direct_call,
    falrt_queue_call,
    falrt_subscribe_call,
    grpc_bytes_call,
    measure_interleaved,
)
from servers import (
    LISTENING,
    baseline,
    deploy,
    falrt_server,
    first_success,
    guarded,
    machine,
    process,
)

from falrt.client.credentials import metadata_for

NOOP_BODY = b'{"value": 1}'
MLP_BODY = json.dumps({"features": [((i * 37) % 101) / 101 for i in range(256)]}).encode()
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
        self.metrics: bool = args.metrics or args.metrics_control
        self.control: bool = args.metrics_control
        # --metrics: each server's CPU time per call served ("on", "off"), in µs.
        self.cpu_us_per_call: dict[str, float] = {}

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


# -- the sections ---------------------------------------------------------------------------


async def measure_section(
    plan: Plan, kind: str, body: bytes, tmp: Path, address: str, target: str
) -> dict[str, Any]:
    """Every target of one section ("echo" or "mlp"), all up at once, measured interleaved:
    the bare grpc.aio server (`grpc_echo`), raw HTTP (`http_raw`), and the falrt app `target`
    on the server at `address` called directly (`falrt_direct`) and through the queue
    (`falrt_queue`)."""
    endpoint_id = await deploy(address, target)
    async with contextlib.AsyncExitStack() as stack:
        ready = await stack.enter_async_context(
            process(baseline(f"grpc-{kind}"), LISTENING, tmp / f"grpc-{kind}.log"))
        bare = await stack.enter_async_context(grpc.aio.insecure_channel(
            f"127.0.0.1:{ready.group(1)}", options=CHANNEL_OPTIONS))
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
        key = metadata_for(address)  # the server's admin key, sent with every call
        calls = {"grpc_echo": grpc_bytes_call(bare, ECHO_METHOD, body)}
        if plan.http:
            http = await stack.enter_async_context(
                process(baseline(f"http-{kind}"), LISTENING, tmp / f"http-{kind}.log"))
            connections = HttpConnections(int(http.group(1)))
            stack.push_async_callback(connections.close)
            calls["http_raw"] = connections.call(body)
        calls["falrt_direct"] = falrt_direct_call(channel, endpoint_id, body, key)
        calls["falrt_queue"] = falrt_queue_call(channel, endpoint_id, body, key)
        calls["falrt_subscribe"] = falrt_subscribe_call(channel, endpoint_id, body, key)
        await first_success(calls["falrt_direct"], endpoint_id)
        return await plan.run(calls)


async def measure_metrics(plan: Plan, tmp: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section `metrics`: examples/noop.py on a server with metrics and on one without, both
    up at once and measured interleaved with the bare grpc.aio echo (see the module
    docstring); the first is scraped once a second meanwhile."""
    async with contextlib.AsyncExitStack() as stack:
        first = ("--no-metrics",) if plan.control else ("--tracing",)
        on = await stack.enter_async_context(falrt_server(
            tmp / "on", tmp / "server-on.log", "--metrics-listen", "127.0.0.1:0", *first))
        off = await stack.enter_async_context(falrt_server(
            tmp / "off", tmp / "server-off.log", "--no-metrics"))
        progress(f"metrics: examples/noop.py on {on} (metrics) and {off} (--no-metrics)")
        ready = await stack.enter_async_context(
            process(baseline("grpc-echo"), LISTENING, tmp / "grpc-echo.log"))
        bare = await stack.enter_async_context(grpc.aio.insecure_channel(
            f"127.0.0.1:{ready.group(1)}", options=CHANNEL_OPTIONS))
        calls = {"grpc_echo": grpc_bytes_call(bare, ECHO_METHOD, NOOP_BODY)}
        for suffix, address in (("", on), ("_off", off)):
            endpoint_id = await deploy(address, "examples/noop.py::Noop")
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
            key = metadata_for(address)
            calls[f"falrt_direct{suffix}"] = falrt_direct_call(channel, endpoint_id, NOOP_BODY, key)
            calls[f"falrt_queue{suffix}"] = falrt_queue_call(channel, endpoint_id, NOOP_BODY, key)
            await first_success(calls[f"falrt_direct{suffix}"], endpoint_id)
        url = _metrics_url(tmp / "server-on.log")
        scraper = asyncio.ensure_future(asyncio.sleep(math.inf) if plan.control else _scrape(url))
        cpu = {name: _cpu_s(tmp / name) for name in ("on", "off")}
        try:
            results = await plan.run(calls)
        finally:
            scraper.cancel()
        for name, suffix in (("on", ""), ("off", "_off")):
            served = sum(f.calls + plan.warmup * int(level)
                         for target in (f"falrt_direct{suffix}", f"falrt_queue{suffix}")
                         for level, f in results[target].items())
            plan.cpu_us_per_call[name] = round(
                (_cpu_s(tmp / name) - cpu[name]) / served * 1e6, 1)
        progress(f"server CPU per call (direct and queue calls together): {plan.cpu_us_per_call}")
        return results


def _cpu_s(data_dir: Path) -> float:
    """User and system CPU seconds of the `falrt server` whose data is in `data_dir` (its
    own process, not its runners), from /proc."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"server" in argv and str(data_dir).encode() in argv:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            continue
    raise RuntimeError(f"no falrt server with --data-dir {data_dir} runs")


def _metrics_url(log: Path) -> str:
    """The /metrics URL a server printed ("falrt metrics listening on HOST:PORT")."""
    found = re.search(r"falrt metrics listening on (\S+)", log.read_text())
    if found is None:
        raise RuntimeError(f"the server did not print its metrics address ({log})")
    return f"http://{found.group(1)}/metrics"


async def _scrape(url: str) -> None:
    """Reads `url` once a second until cancelled, as a Prometheus server would."""
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            (await client.get(url)).raise_for_status()
            await asyncio.sleep(1.0)


def metrics_ratios(section: dict[str, dict[str, Figures]]) -> dict[str, Any]:
    """Per path and concurrency: p50 with metrics / p50 without, and each against the echo."""
    out: dict[str, Any] = {}
    for path in ("falrt_direct", "falrt_queue"):
        for level, on in section[path].items():
            off, base = section[f"{path}_off"][level], section["grpc_echo"][level]
            out[f"metrics.{path}.c{level}.p50_on_off_ratio"] = _ratio(on.p50_ms, off.p50_ms)
            out[f"metrics.{path}.c{level}.p50_ratio_on"] = _ratio(on.p50_ms, base.p50_ms)
            out[f"metrics.{path}.c{level}.p50_ratio_off"] = _ratio(off.p50_ms, base.p50_ms)
            out[f"metrics.{path}.c{level}.rps_on_off_ratio"] = _ratio(on.rps, off.rps)
    return out


async def run_all(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="falrt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if plan.metrics:
            results["metrics"] = await measure_metrics(plan, tmp, progress)
            return results
        async with falrt_server(tmp / "data", tmp / "server.log") as address:
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
    if "metrics" in results:
        return metrics_ratios(results["metrics"])
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


def to_json(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    plain = {
        section: {name: {lvl: f.as_json() for lvl, f in levels.items()}
                  for name, levels in targets.items()}
        for section, targets in results.items()
    }
    return {
        # The echo section's figures, also at the top level as the issue names them.
        **{name: plain["echo"][name] for name in ("grpc_echo", "falrt_direct", "falrt_queue")
           if name in plain.get("echo", {})},
        **plain,
        "ratios": ratios(results),
        "machine": machine(),
        **({"server_cpu_us_per_call": plan.cpu_us_per_call} if plan.cpu_us_per_call else {}),
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
    parser.add_argument("--metrics", action="store_true",
                        help="only the cost of metrics: servers with and without, same run")
    parser.add_argument("--metrics-control", action="store_true",
                        help="--metrics with metrics off on both servers (an A/A run)")
    args = parser.parse_args()
    plan = Plan(args)
    if plan.mlp and importlib.util.find_spec("torch") is None:
        print("torch is not installed here: skipping the mlp section "
              "(pip install -e '.[torch]' to measure it)", file=sys.stderr)
        plan.mlp = False
    started = time.monotonic()
    try:
        results = uvloop.run(guarded(run_all(plan, lambda s: print(f"-- {s}", file=sys.stderr))))
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
