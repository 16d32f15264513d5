"""Durable submits and submit-to-COMPLETED latency, on SQLite and on PostgreSQL, in one run.

    python bench/queue_bench.py [--quick] [--out bench/queue.json] [--postgres DSN]

Starts, all at once, a bare grpc.aio echo server (bench/baselines.py) and two `falrt
server`s: one on SQLite (the default store, in a temporary data dir), one on PostgreSQL
(`--store DSN`, in a fresh database that is dropped at the end). The PostgreSQL server is
the one `--postgres` names, else `FALRT_TEST_POSTGRES_DSN`, else the private one
scripts/postgres.sh starts; when none can be had the run says so and measures SQLite only.
Then, for each store:

- submit: `Queue.Submit` alone at concurrency 64, to an app deployed with
  `max_concurrency = 0`: no runner ever starts, each request just stays queued, so what is
  measured is the RPC and the durable write. Requests per second, p50 and p99 latency. The
  bare echo at concurrency 64 is measured in the same rounds, as the ceiling of this client
  on this machine.
- the queue path, submit to COMPLETED, for examples/noop.py at concurrency 1 and 16, two
  ways: `Queue.Subscribe` (a durable submit and its status stream in one call, what the
  clients' `subscribe` does) and `Queue.Submit` then `Queue.Watch` (two calls), in rounds
  interleaved with the bare echo at the same concurrency, so that the ratio queue p50 /
  echo p50 is fair on a shared machine.

Targets (issue 3), printed as pass/fail, not enforced: the queue path's p50 at concurrency 1
(Subscribe) within 4x the echo's p50 of the same run; SQLite durable submits at least 2,000
per second. Submit-then-Watch is printed next to it, judged by nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import uvloop
from baselines import ECHO_METHOD
from loadgen import (
    CHANNEL_OPTIONS,
    Call,
    Figures,
    falrt_queue_call,
    falrt_submit_call,
    falrt_subscribe_call,
    grpc_bytes_call,
    measure_interleaved,
)
from servers import (
    LISTENING,
    PARKED_APP,
    REPO,
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
DSN_VARIABLE = "FALRT_TEST_POSTGRES_DSN"
SUBMIT_CONCURRENCY = 64
SUBSCRIBE, SUBMIT_WATCH = "subscribe", "submit+watch"
QUEUE_MEASURES = (SUBSCRIBE, SUBMIT_WATCH)  # the first is the one the target judges
TARGET_QUEUE_C1_RATIO = 4.0
TARGET_SQLITE_SUBMITS_PER_S = 2000.0
Progress = Callable[[str], None]


class Plan:
    """How much to measure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.levels: list[int] = args.concurrency
        self.queue_calls: int = 200 if args.quick else 1500
        self.submits: int = 2000 if args.quick else 15000
        self.warmup: int = 5 if args.quick else 30
        self.cap_s: float = 3.0 if args.quick else 12.0

    def as_json(self) -> dict[str, Any]:
        return {"queue_concurrency": self.levels, "queue_calls_per_level": self.queue_calls,
                "submit_concurrency": SUBMIT_CONCURRENCY, "submits": self.submits,
                "warmup_per_worker": self.warmup, "cap_s_per_target": self.cap_s}


@dataclass
class Results:
    """Figures by concurrency level (as a string) for the echo; by store for the rest."""

    echo: dict[str, Figures] = field(default_factory=dict)
    submit: dict[str, Figures] = field(default_factory=dict)
    # by store, then measure (QUEUE_MEASURES), then level
    queue: dict[str, dict[str, dict[str, Figures]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """One falrt server's two apps, reached through one channel."""

    submit: Call
    queue: dict[str, Call]  # by measure (QUEUE_MEASURES)


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_server(dsn: str | None) -> tuple[str | None, str]:
    """The PostgreSQL server to use and where it came from, or None and why there is none."""
    if dsn:
        return dsn, "--postgres"
    if os.environ.get(DSN_VARIABLE):
        return os.environ[DSN_VARIABLE], DSN_VARIABLE
    script = REPO / "scripts" / "postgres.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/postgres.sh did not run: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return None, f"scripts/postgres.sh failed: {done.stderr.strip()[-500:]}"
    return done.stdout.strip(), "scripts/postgres.sh"


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """An empty database on the server `server_dsn` names; its DSN. Dropped at the end."""
    name = f"falrt_bench_{uuid.uuid4().hex[:12]}"
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(server_dsn)._replace(path=f"/{name}").geturl()
    finally:
        await _execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# -- the run ---------------------------------------------------------------------------------


async def start_store(
    stack: contextlib.AsyncExitStack, tmp: Path, name: str, *options: str
) -> Endpoints:
    """A falrt server on one store, with examples/noop.py and the parked app deployed."""
    address = await stack.enter_async_context(
        falrt_server(tmp / name, tmp / f"{name}.log", *options))
    channel = await stack.enter_async_context(
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
    key = metadata_for(address)  # the server's admin key, sent with every call
    noop = await deploy(address, "examples/noop.py::Noop")
    parked = await deploy(address, f"{tmp / 'parked.py'}::Parked")
    endpoints = Endpoints(
        submit=falrt_submit_call(channel, parked, NOOP_BODY, key),
        queue={SUBSCRIBE: falrt_subscribe_call(channel, noop, NOOP_BODY, key),
               SUBMIT_WATCH: falrt_queue_call(channel, noop, NOOP_BODY, key)})
    for call in endpoints.queue.values():
        await first_success(call, f"{name}: {noop}")
    return endpoints


async def start_postgres(
    stack: contextlib.AsyncExitStack, tmp: Path, server_dsn: str | None, progress: Progress
) -> Endpoints | None:
    """The PostgreSQL falrt server, or None (said through `progress`) when it cannot start."""
    if server_dsn is None:
        return None
    try:
        dsn = await stack.enter_async_context(fresh_database(server_dsn))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        progress(f"PostgreSQL at {server_dsn} is not usable ({exc}): measuring SQLite only")
        return None
    return await start_store(stack, tmp, "postgresql", "--store", dsn)


async def run_all(plan: Plan, server_dsn: str | None, progress: Progress) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="falrt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "parked.py").write_text(PARKED_APP)
        async with contextlib.AsyncExitStack() as stack:
            ready = await stack.enter_async_context(
                process(baseline("grpc-echo"), LISTENING, tmp / "grpc-echo.log"))
            bare = await stack.enter_async_context(grpc.aio.insecure_channel(
                f"127.0.0.1:{ready.group(1)}", options=CHANNEL_OPTIONS))
            echo = grpc_bytes_call(bare, ECHO_METHOD, NOOP_BODY)
            progress("starting falrt on SQLite")
            stores = {"sqlite": await start_store(stack, tmp, "sqlite")}
            progress("starting falrt on PostgreSQL")
            if (postgres := await start_postgres(stack, tmp, server_dsn, progress)) is not None:
                stores["postgresql"] = postgres
            await measure_queue(plan, echo, stores, results, progress)
            await measure_submits(plan, echo, stores, results, progress)
    return results


async def measure_queue(
    plan: Plan, echo: Call, stores: dict[str, Endpoints], results: Results, progress: Progress
) -> None:
    for level in plan.levels:
        progress(f"submit-to-COMPLETED at concurrency {level}")
        calls = {"grpc_echo": echo, **{f"{name}/{measure}": call for name, e in stores.items()
                                        for measure, call in e.queue.items()}}
        figures = await measure_interleaved(
            calls, level, plan.queue_calls, warmup=plan.warmup, cap_s=plan.cap_s)
        results.echo[str(level)] = figures.pop("grpc_echo")
        for key, value in figures.items():
            name, measure = key.split("/")
            results.queue.setdefault(name, {}).setdefault(measure, {})[str(level)] = value


async def measure_submits(
    plan: Plan, echo: Call, stores: dict[str, Endpoints], results: Results, progress: Progress
) -> None:
    """Last, so that the requests it leaves queued weigh on nothing else."""
    progress(f"durable submits at concurrency {SUBMIT_CONCURRENCY}")
    calls = {"grpc_echo": echo, **{name: e.submit for name, e in stores.items()}}
    figures = await measure_interleaved(
        calls, SUBMIT_CONCURRENCY, plan.submits, warmup=plan.warmup, cap_s=plan.cap_s)
    results.echo[str(SUBMIT_CONCURRENCY)] = figures.pop("grpc_echo")
    results.submit.update(figures)


# -- reporting -------------------------------------------------------------------------------


def ratios(results: Results) -> dict[str, float]:
    """Each store's queue p50 over the echo's p50 at the same concurrency."""
    return {
        f"{store}.{measure}.c{level}.p50_ratio": _ratio(f.p50_ms, results.echo[level].p50_ms)
        for store, measures in results.queue.items() for measure, levels in measures.items()
        for level, f in levels.items()
    }


def targets(results: Results) -> dict[str, bool]:
    out = {
        f"{store}.{SUBSCRIBE}.c1.p50_ratio<={TARGET_QUEUE_C1_RATIO:g}": bool(
            _ratio(levels["1"].p50_ms, results.echo["1"].p50_ms) <= TARGET_QUEUE_C1_RATIO)
        for store, measures in results.queue.items()
        if "1" in (levels := measures.get(SUBSCRIBE, {}))
    }
    if "sqlite" in results.submit:
        out[f"sqlite.submit.rps>={TARGET_SQLITE_SUBMITS_PER_S:g}"] = bool(
            results.submit["sqlite"].rps >= TARGET_SQLITE_SUBMITS_PER_S)
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else math.nan


def commit() -> str | None:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def to_json(results: Results, plan: Plan, postgres: dict[str, Any]) -> dict[str, Any]:
    stores = {
        store: {"submit": {str(SUBMIT_CONCURRENCY): results.submit[store].as_json()},
                "queue": {measure: {level: f.as_json() for level, f in levels.items()}
                          for measure, levels in results.queue[store].items()}}
        for store in results.queue
    }
    return {
        "stores": stores,
        "grpc_echo": {level: f.as_json() for level, f in results.echo.items()},
        "ratios": ratios(results),
        "targets": targets(results),
        "postgres": postgres,
        "commit": commit(),
        "machine": machine(),
        "plan": plan.as_json(),
    }


def print_table(results: Results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="falrt queue (p50 ratio: against grpc_echo at the same concurrency)")
    for column in ("store", "measure", "conc", "p50 ms", "p99 ms", "rps", "errors", "p50 ratio"):
        table.add_column(column, justify="left" if column in ("store", "measure") else "right")

    def row(store: str, measure: str, level: str, f: Figures) -> None:
        ratio = _ratio(f.p50_ms, results.echo[level].p50_ms)
        table.add_row(store, measure, level, f"{f.p50_ms:.3f}", f"{f.p99_ms:.3f}",
                      f"{f.rps:.0f}", str(f.errors), f"{ratio:.2f}")

    for level, f in results.echo.items():
        row("-", "grpc_echo", level, f)
    for store, measures in results.queue.items():
        row(store, "submit", str(SUBMIT_CONCURRENCY), results.submit[store])
        for measure in QUEUE_MEASURES:
            for level, f in measures.get(measure, {}).items():
                row(store, measure, level, f)
    Console().print(table)


def say(line: str) -> None:
    print(f"-- {line}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description="falrt's durable queue on SQLite and PostgreSQL")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--postgres", metavar="DSN",
                        help=f"a PostgreSQL server (default: ${DSN_VARIABLE}, else "
                             "scripts/postgres.sh)")
    parser.add_argument("--no-postgres", action="store_true", help="measure SQLite only")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                        help="levels of the submit-to-COMPLETED measure")
    args = parser.parse_args()
    plan = Plan(args)
    started = time.monotonic()
    server_dsn, source = (None, "--no-postgres") if args.no_postgres else postgres_server(
        args.postgres)
    if server_dsn is None:
        say(f"no PostgreSQL ({source}): measuring SQLite only")
    try:
        results = uvloop.run(guarded(run_all(plan, server_dsn, say)))
    except asyncio.CancelledError:
        sys.exit("interrupted; the servers it started were stopped")
    print_table(results)
    report = to_json(results, plan, {"measured": "postgresql" in results.queue,
                                     "source": source})
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"]}, indent=2))
    for name, ok in report["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
