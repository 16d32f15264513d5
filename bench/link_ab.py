"""The runner link over gRPC against the stream link (issue 18), interleaved in one run.

    python bench/link_ab.py [--rounds 3] [--levels 1 16 64] [--links grpc auto tcp]
                            [--out bench/link_ab.json]

`falrt server`s serve examples/noop.py, one per link: `grpc` (`--runner-link grpc`, the
gRPC RunnerLink service), `auto` (the default: the process backend's runners on the stream
link, falrt/streamlink.py, over a Unix socket in the data dir) and `tcp` (`--runner-link
stream` on loopback TCP). h2load drives `Queue.Run` (direct) and `Queue.Subscribe`
(durable) on each, and the bare grpc.aio echo for reference (bench/h2targets.py). Per round
and level every target runs once, the links of a path one right after the other, their
order reversed every other round, so that the machine's load (shared with others' work)
falls on all alike. Per link, path and level: the server's and the runner's CPU per call
(from /proc, every thread; the server's per round too), requests per second and p50. CPU
per call is the figure to read on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from breakdown import strace
from h2drive import Run, Target, drive, h2load_binary
from h2targets import WORKLOADS, workload_targets
from servers import falrt_server, guarded

LINKS = {"grpc": ("--runner-link", "grpc"), "auto": (),
         "tcp": ("--runner-link", "stream", "--runner-link-listen", "127.0.0.1:0")}
PATHS = {"direct": "falrt_direct", "subscribe": "falrt_subscribe"}


async def measure(
    links: dict[str, tuple[str, ...]], rounds: int, levels: list[int], calls: dict[int, int],
    syscalls: bool,
) -> dict[str, Any]:
    binary = h2load_binary()
    with tempfile.TemporaryDirectory(prefix="falrt-link-ab-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            targets: dict[str, Target] = {}
            for link, options in links.items():
                folder = Path(tmp) / link
                folder.mkdir()
                address = await stack.enter_async_context(falrt_server(
                    folder / "data", folder / "server.log", *options))
                found = await workload_targets(stack, folder, address, WORKLOADS["echo"])
                targets["echo"] = targets.get("echo", found["grpc_echo"])
                for path, name in PATHS.items():
                    targets[f"{link}/{path}"] = found[name]
            runs: dict[str, dict[int, list[Run]]] = {
                name: {level: [] for level in levels} for name in targets}
            for number in range(rounds):
                order = list(links) if number % 2 == 0 else list(reversed(links))
                for level in levels:
                    names = ["echo", *(f"{link}/{path}" for path in PATHS for link in order)]
                    for name in names:
                        await drive(binary, targets[name], level, max(100, 10 * level))
                        runs[name][level].append(
                            await drive(binary, targets[name], level, calls[level]))
                        print(f"-- round {number + 1} c={level} {name} done", file=sys.stderr)
                for target in targets.values():
                    await target.verify()
            out = {name: {str(level): _figures(each) for level, each in by_level.items()}
                   for name, by_level in runs.items()}
            if syscalls:
                out["syscalls_c16"] = await _syscalls(binary, targets, Path(tmp))
            return out


async def _syscalls(binary: str, targets: dict[str, Target], tmp: Path) -> dict[str, Any]:
    """System calls per call of the server and the runner (strace -c -f, every thread) for
    2,000 calls at c=16 of each falrt target (bench/breakdown.py's way)."""
    out = {}
    for name, target in targets.items():
        if name == "echo":
            continue
        pids = {role: group[0] for role, group in target.pids().items()}
        out[name] = await strace(pids, lambda t=target: drive(binary, t, 16, 2000), 2000, tmp)
    return out


def _figures(runs: list[Run]) -> dict[str, Any]:
    """The rounds' figures together, and the server's CPU per call in each round."""
    total = Run()
    for run in runs:
        total.add(run)
    rounds = [run.as_json()["cpu_ms_per_call"].get("server", 0.0) for run in runs]
    return total.as_json() | {"server_cpu_ms_by_round": rounds}


def print_table(results: dict[str, Any]) -> None:
    print("| link | path | c | server CPU ms/req | (by round) | runner CPU ms/req | req/s | "
          "p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, by_level in results.items():
        link, _, path = name.partition("/")
        for level, f in by_level.items():
            cpu = f["cpu_ms_per_call"]
            print(f"| {link} | {path or 'bare grpc.aio echo'} | {level} | "
                  f"{cpu.get('server', 0):.3f} | "
                  f"{' / '.join(f'{x:.3f}' for x in f['server_cpu_ms_by_round'])} | "
                  f"{cpu.get('runner', 0):.3f} | "
                  f"{f['rps']:,.0f} | {f['p50_ms']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--links", nargs="+", choices=list(LINKS), default=["grpc", "auto"])
    parser.add_argument("--calls", type=int, default=0,
                        help="calls per run (default: 1,500 at c=1, 5,000 above)")
    parser.add_argument("--syscalls", action="store_true",
                        help="then strace each falrt target at c=16 (system calls per call)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    calls = {level: args.calls or (1500 if level == 1 else 5000) for level in args.levels}
    links = {link: LINKS[link] for link in args.links}
    results = uvloop.run(guarded(measure(links, args.rounds, args.levels, calls,
                                         args.syscalls)))
    syscalls = results.pop("syscalls_c16", None)
    print_table(results)
    if syscalls:
        print(json.dumps(syscalls, indent=1))
        results["syscalls_c16"] = syscalls
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
