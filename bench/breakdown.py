"""Where a falrt request's CPU goes, on the server and in its runner (issue 18, point 1).

    python bench/breakdown.py [--calls N] [--concurrency 1 16] [--out FILE] [--raw DIR]
    python bench/breakdown.py --quick            # fewer calls: about 5 minutes, not 10
    python bench/breakdown.py --passes counts    # only one of the passes (profile, counts)

examples/noop.py is called directly (`Queue.Run`) and through the durable queue
(`Queue.Subscribe`) at each concurrency by h2load (bench/h2drive.py; a C client, so that
the caller's own cost stays off the two cores the servers use), in three passes:

1. **py-spy** (`record --native`, 100 samples/s) on the server and on the runner while the
   calls run. Each sample is put in the group of its innermost frame that belongs to a known
   part (`GROUPS`): gRPC transport (grpc's C core, its Cython layer, grpc.aio), store
   (falrt/store, sqlite3), protobuf, falrt Python (falrt/, shim/ and what their code calls,
   such as uuid or msgspec), event loop (uvloop, asyncio), else other. Samples of threads
   that wait (epoll, futexes, locks) are idle and left out, a thread in fdatasync is
   counted apart: the shares are of busy time. Listed too: the top leaf functions, and
   falrt's functions that the busy time was spent in or under. py-spy stops the process for
   each sample: absolute rates drop, the shares are what to read. `--raw DIR` keeps the
   stacks (py-spy's raw format, for flame graphs).
2. **strace -c -f** on the server and the runner (and on the bare grpc.aio echo, for
   comparison) over a fixed number of calls: system calls per call, by name.
3. **counters** (bench/counting/counters.py) on a server started with counting on and an app
   that turns it on in its runner: per call, asyncio tasks and futures created, gRPC
   messages the runner sent and received on its link, SQLite statements by verb.

Each pass has a server of its own, so that the counting does not weigh on the profiles.
Rerun it after a change to the hot path and compare with bench/RESULTS.md, "Issue 18".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from h2drive import Target, cpu_seconds, drive, h2load_binary
from h2targets import NOOP_BODY, WORKLOADS, Workload, workload_targets
from servers import REPO, falrt_server, guarded

# examples/noop.py with the counters on in its runner too (bench/counting/noop_counted.py).
COUNTED = Workload("grpc-echo", "bench/counting/noop_counted.py::NoopCounted", NOOP_BODY)
PATHS = {"direct": "falrt_direct", "subscribe": "falrt_subscribe"}
ATTACH_DEADLINE_S = 30.0
# Innermost-first: a busy sample belongs to the first group one of its frames matches
# (py-spy names Python frames by path relative to sys.path, native ones by library or source).
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("store", re.compile(r"\((falrt/store/|libsqlite3|_sqlite3|cursor\.c|connection\.c)")),
    ("protobuf", re.compile(r"\((_message\.abi3|google/protobuf|protobuf/)")),
    ("gRPC transport", re.compile(r"\(grpc/")),
    ("falrt Python", FALRT := re.compile(r"\((falrt|shim)/")),
    ("event loop", re.compile(r"\((uvloop/|asyncio/|loop\.c|core\.c|linux\.c|loop-watcher\.c|"
                              r"queue\.h|timer\.c|async\.c|uv-common\.c|heap-inl\.h|_asyncio)")),
]
# With --native py-spy samples waiting threads too: a stack whose innermost frame waits
# (epoll, a futex through syscall(), a lock or queue get) is idle, not counted as busy.
WAITING = re.compile(r"^(epoll_wait|epoll_pwait2?|poll|ppoll|select|pselect6?|nanosleep|"
                     r"clock_nanosleep|syscall|accept4?|pthread_cond_\w*wait|sem_\w*wait) ")
# The innermost frame of falrt's own code in a stack, the entry points (under everything the
# loop runs) left out: what `top_falrt` lists.
OWN = re.compile(r"\((falrt|shim)/(?!server/main\.py|main\.py|__main__\.py)")
WAITING_NEAR = re.compile(r"acquire_lock|cond_\w*wait|SimpleQueue_get|sem_\w*wait")
# A thread in fdatasync waits for the disk (the store's commits): counted apart, not busy.
DISK = re.compile(r"^f(data)?sync ")


# -- py-spy ---------------------------------------------------------------------------------


async def traced(
    argv: list[str], ready: Callable[[str], bool], log: Path
) -> asyncio.subprocess.Process:
    """Starts a tracer (py-spy, strace) and returns once `ready(its output so far)`."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ATTACH_DEADLINE_S
    while not ready(log.read_text(errors="replace")):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not attach:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    return proc


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Ends a tracer as Ctrl-C would: it writes its report and detaches."""
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), 60)


async def py_spy(pids: dict[str, int], load: Callable[[], Any], tmp: Path, label: str,
                 keep: Path | None) -> dict[str, Any]:
    """Profiles every process of `pids` (role -> pid) while `load()` runs; keeps py-spy's
    raw output in `keep` as LABEL.ROLE.pyspy when given (for flame graphs)."""
    tracers = {}
    for role, pid in pids.items():
        raw = tmp / f"{role}.pyspy"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--native", "-p",
                str(pid), "-f", "raw", "-o", str(raw)]
        tracers[role] = (raw, await traced(argv, lambda out: "Sampling process" in out,
                                           tmp / f"{role}.pyspy.log"))
    await load()
    summaries = {}
    for role, (raw, proc) in tracers.items():
        await stop(proc)
        summaries[role] = summarise(raw.read_text())
        if keep is not None:
            shutil.copy(raw, keep / f"{label}.{role}.pyspy")
    return summaries


def summarise(raw: str) -> dict[str, Any]:
    """Shares of busy samples per group and the top leaf functions, from py-spy's raw
    (collapsed stacks) output."""
    groups: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    callers: collections.Counter[str] = collections.Counter()  # innermost falrt frames
    idle = disk = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if DISK.match(frames[-1]):
            disk += int(count)
            continue
        if waiting(frames):
            idle += int(count)
            continue
        groups[classify(frames)] += int(count)
        leaves[_short(frames[-1])] += int(count)
        own = next((f for f in reversed(frames) if OWN.search(f)), None)
        if own is not None:
            callers[_short(own)] += int(count)
    total = sum(groups.values()) or 1
    return {
        "busy_samples": total, "idle_samples": idle, "fsync_samples": disk,
        "groups": {name: round(n / total, 3) for name, n in groups.most_common()},
        "top_leaves": {name: round(n / total, 3) for name, n in leaves.most_common(12)},
        # Which of falrt's functions the busy time is spent in or under (what they call
        # included; `OWN`): the rest of 100% ran outside any of them (the loop, gRPC).
        "top_falrt": {name: round(n / total, 3) for name, n in callers.most_common(12)},
    }


def waiting(frames: list[str]) -> bool:
    leaf = frames[-1]
    return bool(WAITING.match(leaf)) or (
        leaf.startswith("0x") and any(WAITING_NEAR.search(f) for f in frames[-4:]))


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in GROUPS:
            if pattern.search(frame):
                return name
    return "other"


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rpartition(':')[0] or where.rstrip(')')).name})"


# -- strace ---------------------------------------------------------------------------------


async def strace(pids: dict[str, int], load: Callable[[], Any], calls: int, tmp: Path
                 ) -> dict[str, Any]:
    """System calls per call of every process of `pids` while `load()` makes `calls`."""
    tracers = {}
    for role, pid in pids.items():
        report = tmp / f"{role}.strace"
        argv = ["strace", "-c", "-f", "-p", str(pid), "-o", str(report)]
        # ("Process N attached with T threads": all of them at once)
        tracers[role] = (report, await traced(
            argv, lambda out: " attached" in out, tmp / f"{role}.log"))
    await load()
    out = {}
    for role, (report, proc) in tracers.items():
        await stop(proc)
        by_name = syscall_counts(report.read_text())
        shown = [name for name, _ in by_name.most_common(10)] + [
            name for name in ("fdatasync", "fsync") if name in by_name]
        out[role] = {"per_call": round(sum(by_name.values()) / calls, 2),
                     "by_name": {name: round(by_name[name] / calls, 2)
                                 for name in dict.fromkeys(shown)}}
    return out


def syscall_counts(report: str) -> collections.Counter[str]:
    """Calls per system call from `strace -c`'s table (its total row left out)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        tokens = line.split()
        if len(tokens) >= 5 and tokens[-1] != "total" and re.fullmatch(r"[\d.]+", tokens[0]):
            counts[tokens[-1]] = int(tokens[3])
    return counts


# -- counters -------------------------------------------------------------------------------


async def counts_now(folder: Path) -> dict[str, collections.Counter[str]]:
    """The counts of every counting process (by role), dumped after this call began."""
    asked = time.time()
    deadline = time.monotonic() + ATTACH_DEADLINE_S
    while True:
        dumps = [json.loads(path.read_text()) | {"role": path.name.partition("-")[0]}
                 for path in folder.glob("*.json")]
        if {d["role"] for d in dumps} >= {"server", "runner"} and all(
                d["written_at"] > asked for d in dumps):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no fresh counts from the server and runner in {folder}")
        await asyncio.sleep(0.05)  # the dumps come every 0.1 s; nothing to wait on instead
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for dump in dumps:
        out[dump["role"]].update(dump["counts"])
    return out


def per_call(before: dict[str, collections.Counter[str]],
             after: dict[str, collections.Counter[str]], calls: int) -> dict[str, Any]:
    """Per role: each count's growth per call, and the totals per kind."""
    out: dict[str, Any] = {}
    for role, counts in after.items():
        grown = {key: (n - before[role][key]) / calls for key, n in counts.items()
                 if n > before[role][key]}
        kinds: collections.Counter[str] = collections.Counter()
        for key, n in grown.items():
            kinds[key.split(" ", 1)[0]] += n
        out[role] = {"kinds": {k: round(n, 2) for k, n in kinds.most_common()},
                     "detail": {k: round(n, 2) for k, n in sorted(grown.items(),
                                                                   key=lambda kv: -kv[1])}}
    return out


# -- the passes -----------------------------------------------------------------------------


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        self.levels: list[int] = args.concurrency
        self.calls: int = args.calls or (1500 if args.quick else 5000)
        self.strace_calls: int = min(self.calls, 1000 if args.quick else 2000)
        self.binary = h2load_binary()
        self.raw: Path | None = args.raw
        self.passes: list[str] = args.passes

    async def warm(self, target: Target, level: int) -> None:
        await drive(self.binary, target, level, max(200, 10 * level))


async def profile_pass(plan: Plan, tmp: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Passes 1 and 2 on one server: py-spy, then strace, per path and level."""
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        address = await stack.enter_async_context(falrt_server(tmp / "data", tmp / "server.log"))
        targets = await workload_targets(stack, tmp, address, WORKLOADS["echo"])
        for path, name in [("echo", "grpc_echo"), *PATHS.items()]:
            target = targets[name]
            for level in plan.levels:
                await plan.warm(target, level)
                pids = {role: group[0] for role, group in target.pids().items()}
                key = f"{path}.c{level}"
                entry: dict[str, Any] = {}
                if path != "echo":
                    progress(f"py-spy {key}")
                    cpu = cpu_seconds(target.pids())
                    started = time.monotonic()
                    entry["pyspy"] = await py_spy(pids, lambda t=target, c=level: drive(
                        plan.binary, t, c, plan.calls), tmp, key, plan.raw)
                    entry["pyspy_cpu_share"] = {
                        role: round((s - cpu[role]) / (time.monotonic() - started), 2)
                        for role, s in cpu_seconds(target.pids()).items()}
                progress(f"strace {key}")
                entry["strace"] = await strace(pids, lambda t=target, c=level: drive(
                    plan.binary, t, c, plan.strace_calls), plan.strace_calls, tmp)
                out[key] = entry
            await target.verify()
    return out


async def count_pass(plan: Plan, tmp: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Pass 3: the counters, on a server (and runner) of their own that count."""
    folder, logs = tmp / "counts", tmp / "counted"
    folder.mkdir()
    logs.mkdir()
    env = {"PYTHONPATH": str(REPO / "bench" / "counting"), "BENCH_COUNTERS": str(folder)}
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        address = await stack.enter_async_context(
            falrt_server(logs / "data", logs / "server.log", env=env))
        targets = await workload_targets(stack, logs, address, COUNTED)
        for path, name in PATHS.items():
            for level in plan.levels:
                progress(f"counters {path}.c{level}")
                await plan.warm(targets[name], level)
                before = await counts_now(folder)
                await drive(plan.binary, targets[name], level, plan.calls)
                out[f"{path}.c{level}"] = per_call(before, await counts_now(folder), plan.calls)
            await targets[name].verify()
    return out


async def run_all(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="falrt-breakdown-") as name:
        tmp = Path(name)
        return {"profile": await profile_pass(plan, tmp, progress)
                if "profile" in plan.passes else {},
                "counts": await count_pass(plan, tmp, progress) if "counts" in plan.passes else {},
                "plan": {"calls": plan.calls, "strace_calls": plan.strace_calls,
                         "concurrency": plan.levels}}


def print_summary(results: dict[str, Any]) -> None:
    """The breakdown as Markdown, the form bench/RESULTS.md keeps it in."""
    names = [g for g, _ in GROUPS] + ["other"]
    print("| path | process | cores busy | " + " | ".join(names)
          + " | fsync/busy | syscalls/call | falrt functions (busy time in or under) |")
    print("|---" * (6 + len(names)) + "|")
    for key, entry in results["profile"].items():
        for role, calls in entry["strace"].items():
            spy = entry.get("pyspy", {}).get(role)
            if spy is None:
                print(f"| {key} | {role} | | " + " | " * len(names)
                      + f" | {calls['per_call']} | |")
                continue
            shares = " | ".join(f"{spy['groups'].get(g, 0):.0%}" for g in names)
            fsync = spy["fsync_samples"] / spy["busy_samples"]
            top = ", ".join(f"{name} {share:.0%}" for name, share in
                            list(spy["top_falrt"].items())[:5])
            print(f"| {key} | {role} | {entry['pyspy_cpu_share'][role]} | {shares} | "
                  f"{fsync:.0%} | {calls['per_call']} | {top} |")
    print()
    print("| path | process | per call |")
    print("|---|---|---|")
    for key, roles in results["counts"].items():
        for role, entry in roles.items():
            kinds = ", ".join(f"{k} {n}" for k, n in entry["kinds"].items())
            detail = ", ".join(f"{k} {n}" for k, n in entry["detail"].items() if n >= 0.05)
            print(f"| {key} | {role} | {kinds} ({detail}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description="where a falrt request's CPU goes")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke run")
    parser.add_argument("--calls", type=int, help="calls per path and level (py-spy, counts)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this folder")
    parser.add_argument("--passes", nargs="+", choices=("profile", "counts"),
                        default=["profile", "counts"], help="which passes to run")
    args = parser.parse_args()
    plan = Plan(args)
    try:
        results = uvloop.run(guarded(run_all(plan, lambda s: print(f"-- {s}", file=sys.stderr))))
    except asyncio.CancelledError:
        sys.exit("interrupted; the servers it started were stopped")
    print_summary(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
