"""What falrt's HTTP gateway adds, next to its own gRPC edge and bare servers, in one run.

    python bench/gateway.py [--quick] [--out bench/http.json]      # make bench-http

Starts, all at once: a bare grpc.aio echo server and a bare ASGI echo on uvicorn (uvloop,
httptools, no framework: bench/baselines.py), and one `falrt server --http-listen` (plain
HTTP on loopback, like the gRPC edge here: no TLS on either) with examples/noop.py and an
app that never runs (`max_concurrency = 0`) deployed. Three sections, each measured in five
interleaved rounds (bench/loadgen.py), so a slow spell of the shared machine falls on every
target alike:

- direct, concurrency 1: `POST /local/noop` (fal's direct API) against `Queue.Run`, with the
  two bare echoes. Target: HTTP p50 within 1.2x the gRPC direct call's p50.
- submit, concurrency 64: `POST /queue/local/parked` against `Queue.Submit` to the same app
  (each request is stored and stays queued: the durable write is measured, as in
  bench/queue_bench.py), with the bare gRPC echo as this client's ceiling. Target: HTTP at least
  80% of the gRPC rate.
- sse, concurrency 1: the status stream (`GET .../requests/ID/status/stream`, read to its
  end) of a request that has COMPLETED, against a plain `GET .../status` of it. Target: the
  stream adds under 0.3 ms to the p50. Also, end to end: HTTP submit + status stream until
  COMPLETED of a noop request against gRPC `Submit` + `Watch` (reported, judged by nothing).

The HTTP calls use a raw keep-alive HTTP/1.1 client (bench/httpclient.py), the gRPC calls
the generated stubs on one grpc.aio channel per target; every call carries the server's
admin key. Prints a table and the targets; `--out` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import uvloop
from baselines import ECHO_METHOD
from httpclient import HttpClient, ok
from loadgen import (
    CHANNEL_OPTIONS,
    Call,
    CallFailed,
    Figures,
    falrt_direct_call,
    falrt_queue_call,
    falrt_submit_call,
    grpc_bytes_call,
    measure_interleaved,
)
from servers import (
    LISTENING,
    PARKED_APP,
    REPO,
    START_DEADLINE_S,
    baseline,
    deploy,
    falrt_server,
    guarded,
    machine,
    process,
)

from falrt.client.credentials import key_for, metadata_for

NOOP_BODY = b'{"value": 1}'
HTTP_LISTENING = re.compile(r"falrt http listening on (\S+):(\d+)")
TARGET_DIRECT_RATIO = 1.2
TARGET_SUBMIT_SHARE = 0.8
TARGET_SSE_ADDED_MS = 0.3
SUBMIT_CONCURRENCY = 64
Progress = Callable[[str], None]


class Plan:
    """How much to measure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.direct_calls = 300 if args.quick else 3000
        self.submits = 1000 if args.quick else 15000
        self.sse_calls = 200 if args.quick else 1500
        self.warmup = 10 if args.quick else 50
        self.cap_s = 3.0 if args.quick else 10.0  # per target and section

    def as_json(self) -> dict[str, Any]:
        return {"direct_calls": self.direct_calls, "submits": self.submits,
                "sse_calls": self.sse_calls, "warmup_per_worker": self.warmup,
                "cap_s_per_target": self.cap_s}


# -- the HTTP calls -------------------------------------------------------------------------


def http_call(client: HttpClient, method: str, path: str, body: bytes = b"") -> Call:
    request = client.encode(method, path, body)

    async def call() -> None:
        ok(await client.send(request), f"{method} {path}")

    return call


def http_submit_then_stream(client: HttpClient, endpoint_id: str, body: bytes) -> Call:
    """fal's queue path over HTTP: submit, then read the status stream until it closes
    (it closes at COMPLETED)."""
    submit = client.encode("POST", f"/queue/{endpoint_id}", body)

    async def call() -> None:
        answer = json.loads(ok(await client.send(submit), "submit").body)
        path = urlsplit(answer["status_url"]).path + "/stream"
        await read_stream(client, path)

    return call


async def read_stream(client: HttpClient, path: str) -> bytes:
    events = ok(await client.send(client.encode("GET", path)), f"GET {path}").body
    last = events.rstrip().rpartition(b"\n\n")[2]
    if b'"COMPLETED"' not in last:
        raise CallFailed(f"{path} ended without COMPLETED: {events[-200:]!r}")
    if b'"error_type"' in last:  # (fal's status document names it only on a failure)
        raise CallFailed(f"the request failed: {last[:200]!r}")
    return events


async def completed_request(client: HttpClient, endpoint_id: str) -> str:
    """The path of the status URL of one noop request, once it has COMPLETED."""
    answer = json.loads(ok(await client.send(client.encode(
        "POST", f"/queue/{endpoint_id}", NOOP_BODY)), "submit").body)
    path = urlsplit(answer["status_url"]).path
    await read_stream(client, path + "/stream")
    return path


async def first_success(call: Call, what: str, deadline_s: float = 120.0) -> None:
    """Calls until one call succeeds (the first starts a runner)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await call()
            return
        except (grpc.RpcError, CallFailed, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no successful call within {deadline_s:.0f} s"
                                   ) from None
            await asyncio.sleep(0.05)


async def http_port(log: Path) -> int:
    """The port the server's log says its HTTP listener got."""
    deadline = time.monotonic() + START_DEADLINE_S
    while not (match := HTTP_LISTENING.search(log.read_text(errors="replace"))):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 'falrt http listening' line in {log}")
        await asyncio.sleep(0.05)
    return int(match.group(2))


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rig:
    """What the sections call: falrt on both edges, the bare servers, the deployed apps."""

    channel: grpc.aio.Channel  # falrt's gRPC edge
    meta: tuple[tuple[str, str], ...]  # its admin key, as call metadata
    http: HttpClient  # falrt's HTTP gateway, with the same key
    echo: Call  # the bare grpc.aio echo
    asgi: HttpClient  # the bare ASGI echo
    noop: str  # examples/noop.py's endpoint id
    parked: str  # the app that never runs


async def start(stack: contextlib.AsyncExitStack, tmp: Path, progress: Progress) -> Rig:
    """Starts every server (stopped when `stack` closes), deploys, warms both edges up."""
    (tmp / "parked.py").write_text(PARKED_APP)
    address = await stack.enter_async_context(falrt_server(
        tmp / "data", tmp / "server.log", "--http-listen", "127.0.0.1:0"))
    port = await http_port(tmp / "server.log")
    grpc_ready = await stack.enter_async_context(
        process(baseline("grpc-echo"), LISTENING, tmp / "grpc-echo.log"))
    asgi_ready = await stack.enter_async_context(
        process(baseline("asgi-echo"), LISTENING, tmp / "asgi-echo.log"))
    progress(f"falrt at {address} (HTTP on {port}); deploying")
    key = key_for(address)
    bare = await stack.enter_async_context(grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_ready.group(1)}", options=CHANNEL_OPTIONS))
    rig = Rig(
        channel=await stack.enter_async_context(
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)),
        meta=metadata_for(address),
        http=HttpClient(port, {"Authorization": f"Key {key}"} if key else {}),
        echo=grpc_bytes_call(bare, ECHO_METHOD, NOOP_BODY),
        asgi=HttpClient(int(asgi_ready.group(1))),
        noop=await deploy(address, "examples/noop.py::Noop"),
        parked=await deploy(address, f"{tmp / 'parked.py'}::Parked"),
    )
    for client in (rig.http, rig.asgi):
        stack.push_async_callback(client.close)
    await first_success(falrt_direct_call(rig.channel, rig.noop, NOOP_BODY, rig.meta), rig.noop)
    await first_success(http_call(rig.http, "POST", f"/{rig.noop}", NOOP_BODY), "HTTP direct")
    return rig


async def direct(plan: Plan, rig: Rig) -> dict[str, Figures]:
    """Concurrency 1: fal's direct API against Queue.Run, with both bare echoes."""
    return await measure_interleaved({
        "grpc_echo": rig.echo,
        "asgi_echo": http_call(rig.asgi, "POST", "/", NOOP_BODY),
        "falrt_grpc_direct": falrt_direct_call(rig.channel, rig.noop, NOOP_BODY, rig.meta),
        "falrt_http_direct": http_call(rig.http, "POST", f"/{rig.noop}", NOOP_BODY),
    }, 1, plan.direct_calls, warmup=plan.warmup, cap_s=plan.cap_s * 4)


async def submit(plan: Plan, rig: Rig) -> dict[str, Figures]:
    """Concurrency 64: durable submits over HTTP against Queue.Submit."""
    return await measure_interleaved({
        "grpc_echo": rig.echo,
        "falrt_grpc_submit": falrt_submit_call(rig.channel, rig.parked, NOOP_BODY, rig.meta),
        "falrt_http_submit": http_call(rig.http, "POST", f"/queue/{rig.parked}", NOOP_BODY),
    }, SUBMIT_CONCURRENCY, plan.submits, warmup=plan.warmup // 5 or 1, cap_s=plan.cap_s * 3)


async def sse(plan: Plan, rig: Rig) -> dict[str, Figures]:
    """Concurrency 1: a completed request's status stream against its status; and the
    queue path end to end, HTTP submit + status stream against Submit + Watch."""
    done = await completed_request(rig.http, rig.noop)
    return await measure_interleaved({
        "completed_status": http_call(rig.http, "GET", done),
        "completed_stream": http_call(rig.http, "GET", done + "/stream"),
        "falrt_grpc_submit_watch": falrt_queue_call(rig.channel, rig.noop, NOOP_BODY, rig.meta),
        "falrt_http_submit_stream": http_submit_then_stream(rig.http, rig.noop, NOOP_BODY),
    }, 1, plan.sse_calls, warmup=plan.warmup, cap_s=plan.cap_s * 4)


async def run_all(plan: Plan, progress: Progress) -> dict[str, dict[str, Figures]]:
    with tempfile.TemporaryDirectory(prefix="falrt-bench-http-") as tmp_name:
        async with contextlib.AsyncExitStack() as stack:
            rig = await start(stack, Path(tmp_name), progress)
            results = {}
            for name, section in (("direct", direct), ("submit", submit), ("sse", sse)):
                progress(f"{name}: {(section.__doc__ or '').splitlines()[0]}")
                results[name] = await section(plan, rig)
            return results


# -- reporting ------------------------------------------------------------------------------


def judge(results: dict[str, dict[str, Figures]]) -> dict[str, Any]:
    direct, submit, sse = results["direct"], results["submit"], results["sse"]
    ratio = _div(direct["falrt_http_direct"].p50_ms, direct["falrt_grpc_direct"].p50_ms)
    share = _div(submit["falrt_http_submit"].rps, submit["falrt_grpc_submit"].rps)
    added = sse["completed_stream"].p50_ms - sse["completed_status"].p50_ms
    end_to_end = sse["falrt_http_submit_stream"].p50_ms - sse["falrt_grpc_submit_watch"].p50_ms
    return {
        "direct.http_over_grpc_p50_ratio": ratio,
        "direct.http_over_asgi_echo_p50_added_ms": round(
            direct["falrt_http_direct"].p50_ms - direct["asgi_echo"].p50_ms, 3),
        "direct.grpc_over_grpc_echo_p50_added_ms": round(
            direct["falrt_grpc_direct"].p50_ms - direct["grpc_echo"].p50_ms, 3),
        "submit.http_share_of_grpc_rps": share,
        "sse.completed_stream_added_p50_ms": round(added, 3),
        "sse.http_submit_stream_over_grpc_submit_watch_p50_added_ms": round(end_to_end, 3),
        "targets": {
            f"direct.http_over_grpc_p50_ratio<={TARGET_DIRECT_RATIO:g}":
                ratio <= TARGET_DIRECT_RATIO,
            f"submit.http_share_of_grpc_rps>={TARGET_SUBMIT_SHARE:g}":
                share >= TARGET_SUBMIT_SHARE,
            f"sse.completed_stream_added_p50_ms<{TARGET_SSE_ADDED_MS:g}":
                added < TARGET_SSE_ADDED_MS,
        },
    }


def _div(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else math.nan


def print_table(results: dict[str, dict[str, Figures]]) -> None:
    print(f"{'section':8} {'target':26} {'p50 ms':>8} {'p99 ms':>8} {'rps':>8} {'errors':>6}")
    for section, targets in results.items():
        for name, f in targets.items():
            print(f"{section:8} {name:26} {f.p50_ms:8.3f} {f.p99_ms:8.3f} {f.rps:8.0f} "
                  f"{f.errors:6d}")


def commit() -> str:
    """The checkout's commit, with "+changes" when the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain")
                                                  else "")


def main() -> None:
    parser = argparse.ArgumentParser(description="falrt's HTTP gateway next to its gRPC edge")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    plan = Plan(args)
    started = time.monotonic()
    try:
        results = uvloop.run(guarded(run_all(plan, lambda s: print(f"-- {s}", file=sys.stderr))))
    except asyncio.CancelledError:
        sys.exit("interrupted; the servers it started were stopped")
    print_table(results)
    verdict = judge(results)
    print(json.dumps(verdict, indent=2))
    elapsed = time.monotonic() - started
    print(f"total {elapsed:.0f} s", file=sys.stderr)
    if args.out:
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit(),
            **{section: {name: f.as_json() for name, f in targets.items()}
               for section, targets in results.items()},
            "judged": verdict, "machine": machine(), "plan": plan.as_json(),
            "total_s": round(elapsed, 1),
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
