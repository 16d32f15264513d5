"""Two trees' queue path (durable, or direct with `--direct`) side by side, interleaved in one
run (issue 18).

    python bench/queue_ab.py --base DIR [--rounds 4] [--levels 1 16] [--out FILE]

Two `falrt server`s serve examples/noop.py: A runs the falrt package of `--base` (a checkout
of the tree to compare with, e.g. `git archive COMMIT | tar -x -C DIR`; it goes first on
PYTHONPATH, the runners use this tree's shim), B runs this tree. h2load drives
`Queue.Subscribe` (a durable submit, the run, the stored result and its status stream in
one call) on each, at each level, A and B one right after the other, their order reversed
every other round, so that the load of a shared machine falls on both alike. Per server and
level: its CPU per call (from /proc, every thread: the SQLite writer's too; per round as
well), requests per second and p50. CPU per call is the figure to read on a busy machine.
`--fsync` adds the number of fdatasync calls per call at c=1 (strace, 500 calls).
`--direct` drives `Queue.Run` (the direct path) instead of Subscribe; `--echo` adds the
bare grpc.aio echo (one hop, what the caller-facing edge alone costs) to every round.
`--submit C` adds durable submits alone (`Queue.Submit` at concurrency C to an app that
never gets a runner, as bench/queue_bench.py measures them, but driven by h2load, whose own
cost stays off the server's core): "submit" in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import uvloop
from breakdown import strace
from h2drive import GRPC_HEADERS, Run, Target, drive, grpc_frame, h2load_binary, listening_pid
from h2targets import NOOP_BODY, WORKLOADS, workload_targets
from loadgen import CALL_TIMEOUT_S, CHANNEL_OPTIONS, payload
from servers import PARKED_APP, deploy, falrt_server, guarded

from falrt.client.credentials import metadata_for
from falrt.v1 import queue_pb2, queue_pb2_grpc

SIDES = ("A", "B")


async def submit_target(stack: contextlib.AsyncExitStack, folder: Path, address: str) -> Target:
    """Queue.Submit of an app with max_concurrency 0 on the server at `address`."""
    (folder / "parked.py").write_text(PARKED_APP)
    endpoint_id = await deploy(address, f"{folder / 'parked.py'}::Parked")
    channel = await stack.enter_async_context(
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
    key = metadata_for(address)
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint_id, path="/",
                                      input=payload(NOOP_BODY))
    server_pid = listening_pid(int(address.rpartition(":")[2]))

    async def check() -> int:
        answer = await queue_pb2_grpc.QueueStub(channel).Submit(
            request, timeout=CALL_TIMEOUT_S, metadata=key)
        assert answer.request_id
        return len(grpc_frame(answer.SerializeToString()))

    target = Target("falrt_submit", f"http://{address}/falrt.v1.Queue/Submit",
                    grpc_frame(request.SerializeToString()),
                    (*GRPC_HEADERS, *(f"{name}: {value}" for name, value in key)),
                    lambda: {"server": [server_pid]}, check)
    return await target.checked()


async def measure(
    base: Path, rounds: int, levels: list[int], calls: dict[int, int], fsync: bool,
    submit: int = 0, direct: bool = False, echo: bool = False,
) -> dict[str, Any]:
    binary = h2load_binary()
    with tempfile.TemporaryDirectory(prefix="falrt-queue-ab-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            targets: dict[str, Target] = {}
            for side in SIDES:
                folder = Path(tmp) / side
                folder.mkdir()
                env = {"PYTHONPATH": str(base)} if side == "A" else None
                address = await stack.enter_async_context(falrt_server(
                    folder / "data", folder / "server.log", env=env))
                found = await workload_targets(stack, folder, address, WORKLOADS["echo"])
                targets[side] = found["falrt_direct" if direct else "falrt_subscribe"]
                if echo and side == "B":
                    targets["echo"] = found["grpc_echo"]
                if submit:
                    targets[f"{side}/submit"] = await submit_target(stack, folder, address)
            plan = [(level, "", calls[level]) for level in levels]
            if submit:
                plan.append((submit, "/submit", calls.get(submit, 3000) * 2))
            runs: dict[str, dict[int, list[Run]]] = {name: {} for name in targets}
            for number in range(rounds):
                order = SIDES if number % 2 == 0 else tuple(reversed(SIDES))
                for level, kind, count in plan:
                    for side in (*order, "echo") if echo and not kind else order:
                        target = targets[side + kind]
                        await drive(binary, target, level, max(100, 10 * level))
                        runs[side + kind].setdefault(level, []).append(
                            await drive(binary, target, level, count))
                        print(f"-- round {number + 1} c={level} {side}{kind} done",
                              file=sys.stderr)
                for target in targets.values():
                    await target.verify()
            out: dict[str, Any] = {
                side: {str(level): _figures(each) for level, each in by_level.items()}
                for side, by_level in runs.items()}
            if fsync:
                out["syscalls_c1"] = {
                    side: await strace({"server": target.pids()["server"][0]},
                                       lambda t=target: drive(binary, t, 1, 500), 500, Path(tmp))
                    for side, target in targets.items() if side in SIDES}
            return out


def _figures(runs: list[Run]) -> dict[str, Any]:
    """The rounds' figures together, and the server's CPU per call of each round (and its
    median)."""
    total = Run()
    for run in runs:
        total.add(run)
    rounds = [run.as_json()["cpu_ms_per_call"].get("server", 0.0) for run in runs]
    return total.as_json() | {"server_cpu_ms_by_round": rounds,
                              "server_cpu_ms_median": statistics.median(rounds)}


def print_table(results: dict[str, Any]) -> None:
    print("| side | c | server CPU ms/req (median) | (by round) | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for side, by_level in results.items():
        for level, f in by_level.items():
            print(f"| {side} | {level} | {f['server_cpu_ms_median']:.3f} | "
                  f"{' / '.join(f'{x:.3f}' for x in f['server_cpu_ms_by_round'])} | "
                  f"{f['rps']:,.0f} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True,
                        help="the tree A runs (a directory holding its falrt package)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--calls", type=int, default=0,
                        help="calls per run (default: 1,000 at c=1, 3,000 above)")
    parser.add_argument("--fsync", action="store_true",
                        help="then strace each server over 500 calls at c=1")
    parser.add_argument("--submit", type=int, default=0, metavar="C",
                        help="durable submits alone too, at concurrency C (e.g. 64)")
    parser.add_argument("--direct", action="store_true",
                        help="drive Queue.Run (the direct path) instead of Queue.Subscribe")
    parser.add_argument("--echo", action="store_true",
                        help="the bare grpc.aio echo too, in every round")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    calls = {level: args.calls or (1000 if level == 1 else 3000) for level in args.levels}
    results = uvloop.run(guarded(measure(
        args.base.resolve(), args.rounds, args.levels, calls, args.fsync, args.submit, args.direct,
        args.echo)))
    syscalls = results.pop("syscalls_c1", None)
    print_table(results)
    if syscalls:
        print(json.dumps(syscalls, indent=1))
        results["syscalls_c1"] = syscalls
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
