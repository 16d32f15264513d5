"""What falrt adds to a call, measured next to bare servers in one run on one machine.

    python bench/overhead.py [--quick] [--out bench/overhead.json]
    python bench/overhead.py --metrics [--quick] [--out bench/metrics.json]
    python bench/overhead.py --h2load [--quick] [--no-mlp] [--record|--check bench/ratios.json]

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

`--h2load` drives the calls with h2load, a C HTTP/2 load generator, instead of this process
(bench/h2drive.py, bench/h2targets.py; issue 18): sections `h2load` (the bare echo, examples/
noop.py called with `Queue.Run` and with `Queue.Subscribe`) and `h2load_mlp` (the same with the
model), at concurrency 1, 16 and 64, two interleaved rounds (one with --quick). Per target and
level: p50, p99, requests per second and the serving processes' CPU per call (server and
runner), and each as a ratio to the bare server of the section. `--record FILE` writes those
ratios; `--check FILE` compares them with the ones recorded there and exits 1 when one got
worse by more than 25% (`make bench-check`).

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
from h2drive import Run, drive, h2load_binary
from h2targets import MLP_BODY, NOOP_BODY, WORKLOADS, workload_targets
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

TARGETS_ECHO_C1 = {"falrt_direct": 3.0, "falrt_queue": 6.0}


class Plan:
    """How much to measure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.levels: list[int] = args.concurrency or ([1, 16, 64] if args.h2load else [1, 16])
        self.calls: int = args.calls or (300 if args.quick else 1500)
        self.calls_given: bool = args.calls is not None
        self.quick: bool = args.quick
        self.warmup: int = 10 if args.quick else 50
        self.cap_s: float = 5.0 if args.quick else 12.0
        self.http: bool = not args.no_http
        self.mlp: bool = not args.no_mlp
        self.metrics: bool = args.metrics or args.metrics_control
        self.control: bool = args.metrics_control
        self.h2load: bool = args.h2load
        self.rounds: int = 1 if args.quick else 2  # --h2load: interleaved rounds
        # --metrics: each server's CPU time per call served ("on", "off"), in µs.
        self.cpu_us_per_call: dict[str, float] = {}

    def h2load_calls(self, level: int) -> int:
        """--h2load: calls per run at `level` (--calls, or enough for 0.5-4 s each)."""
        if self.calls_given:
            return self.calls
        return (600 if self.quick else 1500) if level == 1 else (2000 if self.quick else 5000)

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


async def measure_h2load(plan: Plan, tmp: Path, progress: Callable[[str], None], kind: str
                         ) -> dict[str, dict[str, Run]]:
    """Section `h2load` (kind "echo") or `h2load_mlp` ("mlp"): the bare grpc.aio server,
    falrt direct and falrt Subscribe driven by h2load (bench/h2drive.py, bench/h2targets.py),
    each level of each target in turn, `plan.rounds` times; a real client checks every
    target's answer before and after each round."""
    binary = h2load_binary()
    folder = tmp / f"h2load-{kind}"
    folder.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        address = await stack.enter_async_context(
            falrt_server(folder / "data", folder / "server.log"))
        targets = await workload_targets(stack, folder, address, WORKLOADS[kind])
        progress(f"h2load {kind}: {', '.join(targets)}; falrt at {address}")
        runs = {name: {str(level): Run() for level in plan.levels} for name in targets}
        for _ in range(plan.rounds):
            for level in plan.levels:
                for name, target in targets.items():
                    await drive(binary, target, level, max(100, 10 * level))  # warm-up
                    runs[name][str(level)].add(
                        await drive(binary, target, level, plan.h2load_calls(level)))
            for target in targets.values():
                await target.verify()
        return runs


def h2load_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each falrt path against the bare server of its section: p50 at c=1, requests per
    second and CPU per call at every level; the issue's targets (issue 18) met or not."""
    out: dict[str, Any] = {}
    for name, section in results.items():
        out |= _section_ratios(name, section)
    figures = _h2load_figures(results["h2load"]) if "h2load" in results else {}
    mlp = out.get("h2load_mlp.falrt_direct.c16.rps_ratio")
    return out | {"targets": (_targets(out, figures) if figures else {}) | (
        {"mlp.falrt_direct.c16.rps_ratio>=1": bool(mlp >= 1.0)} if mlp is not None else {})}


def _h2load_figures(section: dict[str, dict[str, Run]]) -> dict[str, Any]:
    return {name: {level: run.as_json() for level, run in levels.items()}
            for name, levels in section.items()}


def _section_ratios(prefix: str, section: dict[str, dict[str, Run]]) -> dict[str, float]:
    figures = _h2load_figures(section)
    out = {}
    for name in ("falrt_direct", "falrt_subscribe"):
        for level, f in figures[name].items():
            base = figures["grpc_echo"][level]
            if level == "1":
                # (No CPU ratio at c=1: there the servers' idle work, timers and the scaling
                # loop, grows with the wall time and swings with the machine's load.)
                out[f"{prefix}.{name}.c1.p50_ratio"] = _ratio(f["p50_ms"], base["p50_ms"])
                continue
            out[f"{prefix}.{name}.c{level}.rps_ratio"] = _ratio(f["rps"], base["rps"])
            out[f"{prefix}.{name}.c{level}.cpu_ratio"] = _ratio(
                f["cpu_ms_per_call"]["total"], base["cpu_ms_per_call"]["total"])
    return out


def _targets(out: dict[str, Any], figures: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets on the echo section."""
    server_cpu = {name: figures[name].get("16", {}).get("cpu_ms_per_call", {}).get("server")
                  for name in ("falrt_direct", "falrt_subscribe")}
    limits = [("falrt_direct.c1.p50_ratio", 2.0, -1), ("falrt_subscribe.c1.p50_ratio", 3.5, -1),
              *((f"falrt_direct.c{lvl}.rps_ratio", 0.5, 1) for lvl in (16, 64)),
              *((f"falrt_subscribe.c{lvl}.rps_ratio", 0.3, 1) for lvl in (16, 64))]
    return {
        f"{key}{'>=' if sign > 0 else '<='}{limit:g}": bool(sign * (value - limit) >= 0)
        for key, limit, sign in limits if (value := out.get(f"h2load.{key}")) is not None
    } | {
        f"{name}.c16.server_cpu_ms<={limit:g}": bool(server_cpu[name] <= limit)
        for name, limit in (("falrt_direct", 0.30), ("falrt_subscribe", 0.45))
        if server_cpu[name] is not None
    }


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
        if plan.h2load:
            results["h2load"] = await measure_h2load(plan, tmp, progress, "echo")
            if plan.mlp:
                results["h2load_mlp"] = await measure_h2load(plan, tmp, progress, "mlp")
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
    if "h2load" in results:
        return h2load_ratios(results)
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
    plain: dict[str, Any] = {
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


def print_h2load_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="h2load: falrt next to bare grpc.aio servers (ratios: to the bare one)")
    for column in ("section", "target", "conc", "p50 ms", "p99 ms", "req/s", "CPU ms/call",
                   "server", "runner", "p50 ratio", "req/s ratio", "CPU ratio"):
        table.add_column(column, justify="left" if column in ("section", "target") else "right")
    for kind, runs in results.items():
        _h2load_rows(table, kind, _h2load_figures(runs))
    Console(width=160).print(table)


def _h2load_rows(table: Any, kind: str, section: dict[str, Any]) -> None:
    for name, levels in section.items():
        for level, f in levels.items():
            base, cpu = section["grpc_echo"][level], f["cpu_ms_per_call"]
            table.add_row(
                kind, name, level, f"{f['p50_ms']:.3f}", f"{f['p99_ms']:.3f}", f"{f['rps']:.0f}",
                f"{cpu['total']:.3f}", f"{cpu['server']:.3f}", f"{cpu.get('runner', 0):.3f}",
                f"{_ratio(f['p50_ms'], base['p50_ms']):.2f}",
                f"{_ratio(f['rps'], base['rps']):.2f}",
                f"{_ratio(cpu['total'], base['cpu_ms_per_call']['total']):.2f}")


# -- recorded ratios (make bench-check) ------------------------------------------------------

WORSE_BY = 1.25  # --check reports a ratio that got worse by more than this factor


def record_ratios(path: Path, report: dict[str, Any]) -> None:
    """Writes the run's ratios (those `check_ratios` compares) with the machine and plan."""
    recorded = {key: value for key, value in report["ratios"].items()
                if key.endswith("_ratio") and not math.isnan(value)}
    path.write_text(json.dumps({"ratios": recorded, "machine": report["machine"],
                                "plan": report["plan"]}, indent=2) + "\n")


def check_ratios(path: Path, ratios: dict[str, Any]) -> bool:
    """Prints each recorded ratio that got worse by more than 25% (`rps` ratios: lower,
    the others: higher); whether none did."""
    recorded = json.loads(path.read_text())["ratios"]
    worse = []
    for key, old in recorded.items():
        new = ratios.get(key)
        if new is None or math.isnan(new):
            worse.append(f"{key}: recorded {old}, not measured now")
            continue
        factor = old / new if "rps" in key else new / old
        if factor > WORSE_BY:
            worse.append(f"{key}: {old} -> {new} ({(factor - 1) * 100:.0f}% worse)")
    print(f"bench-check against {path}: {len(worse)} of {len(recorded)} ratios worse by more "
          "than 25%" + "".join(f"\n  {line}" for line in worse))
    return not worse


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
    parser.add_argument("--concurrency", type=int, nargs="+",
                        help="levels (default 1 16; with --h2load 1 16 64)")
    parser.add_argument("--no-http", action="store_true", help="skip the raw HTTP reference")
    parser.add_argument("--no-mlp", action="store_true", help="skip the mlp section")
    parser.add_argument("--metrics", action="store_true",
                        help="only the cost of metrics: servers with and without, same run")
    parser.add_argument("--metrics-control", action="store_true",
                        help="--metrics with metrics off on both servers (an A/A run)")
    parser.add_argument("--h2load", action="store_true",
                        help="drive the bare server, falrt direct and Subscribe calls with "
                        "h2load instead (echo, and mlp unless --no-mlp)")
    parser.add_argument("--record", type=Path,
                        help="write the ratios to this file (what --check compares with)")
    parser.add_argument("--check", type=Path, help="compare the ratios with those recorded "
                        "in this file; exit 1 if one got worse by more than 25%%")
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
    (print_h2load_table if plan.h2load else print_table)(results)
    report = to_json(results, plan)
    print(json.dumps(report["ratios"], indent=2))
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        record_ratios(args.record, report)
    if args.check and not check_ratios(args.check, report["ratios"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
