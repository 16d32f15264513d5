"""The autoscaling picture: a traffic trace replayed against a real server, drawn over time.

    python bench/autoscale.py [--quick] [--out-png docs/autoscale.png]
                              [--out-json bench/autoscale.json]

Starts a `falrt server` (its own data directory, the SQLite store), deploys
bench/apps/autoscale_app.py (each request sleeps `--sleep` seconds; at most 4 runners of 2
requests each; an idle runner goes after 5 s), and replays TRACE below through the queue
(`Queue.Submit`, then `Queue.Watch` until COMPLETED). Meanwhile it samples the public Control
API every SAMPLE_S (`ListRunners`: runners and their states and in-flight requests;
`QueueSize`) and at the end draws queue depth, in-flight requests and runners by state over
time (matplotlib, Agg) and writes a JSON summary with the series. Needs matplotlib:
`pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from loadgen import falrt_queue_call
from servers import REPO, deploy, falrt_server, guarded, machine

from falrt.client.connection import aio_channel
from falrt.v1 import common_pb2, control_pb2, control_pb2_grpc


@dataclass(frozen=True)
class Phase:
    """One stretch of the trace. `burst` requests are submitted at once when it begins, then
    `rate` requests per second, evenly spaced, until `duration_s` has passed. A phase with
    `until_no_runners` ends as soon as every request has completed and no runner is left
    (`duration_s` is then its longest)."""

    name: str
    duration_s: float
    burst: int = 0
    rate: float = 0.0
    until_no_runners: bool = False


# The trace: edit these to replay other traffic.
TRACE = [
    Phase("idle", 3.0),
    Phase("burst", 8.0, burst=60),
    Phase("plateau", 15.0, rate=5.0),
    Phase("idle", 60.0, until_no_runners=True),
]
QUICK_TRACE = [
    Phase("idle", 1.0),
    Phase("burst", 4.0, burst=16),
    Phase("plateau", 4.0, rate=4.0),
    Phase("idle", 40.0, until_no_runners=True),
]
SAMPLE_S = 0.15  # how often the Control API is sampled
TAIL_S = 1.0  # samples kept after the last phase ends, so the plot shows zero runners
APP = REPO / "bench" / "apps" / "autoscale_app.py"
APP_TARGET = f"{APP}::AutoscaleApp"
# Lifecycle order: the stacking order of the plot, bottom up.
STATES = ["PENDING", "IMAGE_PULL", "SETUP", "CRASH_BACKOFF", "IDLE", "RUNNING", "DRAINING",
          "TERMINATING", "TERMINATED"]
COLOURS = {"PENDING": "#c7c7c7", "IMAGE_PULL": "#9edae5", "SETUP": "#ffbb78",
           "CRASH_BACKOFF": "#d62728", "IDLE": "#98df8a", "RUNNING": "#2ca02c",
           "DRAINING": "#9467bd", "TERMINATING": "#8c564b", "TERMINATED": "#7f7f7f"}


@dataclass
class Sample:
    t: float  # seconds since the trace began
    queue: int
    in_flight: int
    states: dict[str, int]  # runners by state (TERMINATED ones included when listed)
    most_on_one_runner: int
    first_ready_wall: float | None  # earliest state_since of a ready (IDLE/RUNNING) runner

    @property
    def runners(self) -> int:
        return sum(n for state, n in self.states.items() if state != "TERMINATED")


@dataclass
class Run:
    """What one replay saw."""

    t0_wall: float = 0.0  # time.time() when the trace began
    submits: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # name, start, end


# -- replaying and sampling -----------------------------------------------------------------


class Replay:
    def __init__(self, channel: grpc.aio.Channel, endpoint_id: str, app_name: str,
                 sleep_s: float) -> None:
        self.control = control_pb2_grpc.ControlStub(channel)
        self.call = falrt_queue_call(channel, endpoint_id, json.dumps({"sleep_s": sleep_s})
                                     .encode())
        self.app_name = app_name
        self.run = Run()
        self.start = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def replay(self, trace: list[Phase]) -> Run:
        self.start = time.monotonic()
        self.run.t0_wall = time.time()
        sampler = asyncio.create_task(self.sample_forever())
        try:
            for phase in trace:
                begin = self.now()
                await self.play(phase, begin)
                self.run.phases.append((phase.name, begin, self.now()))
            await asyncio.sleep(TAIL_S)
            if self.tasks:  # a request still open after the last phase: wait for its end
                await asyncio.wait(self.tasks)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        return self.run

    async def play(self, phase: Phase, begin: float) -> None:
        for _ in range(phase.burst):
            self.submit()
        if phase.rate > 0:
            for i in range(int(phase.duration_s * phase.rate)):
                await asyncio.sleep(max(0.0, begin + i / phase.rate - self.now()))
                self.submit()
        end = begin + phase.duration_s
        while self.now() < end:
            if phase.until_no_runners and self.drained():
                return
            await asyncio.sleep(min(SAMPLE_S, end - self.now()))

    def drained(self) -> bool:
        last = self.run.samples[-1] if self.run.samples else None
        return not self.tasks and last is not None and last.runners == 0 and last.queue == 0 \
            and last.t > (self.run.completions[-1] if self.run.completions else 0.0)

    def submit(self) -> None:
        self.run.submits.append(self.now())
        task = asyncio.create_task(self.one_request())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def one_request(self) -> None:
        try:
            await self.call()
        except Exception as exc:  # a failed request is counted, not fatal
            self.run.failures.append(f"{type(exc).__name__}: {exc}"[:300])
        else:
            self.run.completions.append(self.now())

    async def sample_forever(self) -> None:
        while True:
            began = time.monotonic()
            try:
                self.run.samples.append(await self.sample())
            except grpc.RpcError as exc:
                print(f"-- sample failed: {exc}", file=sys.stderr)
            await asyncio.sleep(max(0.0, SAMPLE_S - (time.monotonic() - began)))

    async def sample(self) -> Sample:
        t = self.now()
        runners, size = await asyncio.gather(
            self.control.ListRunners(control_pb2.ListRunnersRequest(app_name=self.app_name),
                                     timeout=10),
            self.control.QueueSize(control_pb2.QueueSizeRequest(app_name=self.app_name),
                                   timeout=10),
        )
        states: Counter[str] = Counter()
        ready: list[float] = []
        for runner in runners.runners:
            state = common_pb2.RunnerState.Name(runner.state).removeprefix("RUNNER_STATE_")
            states[state] += 1
            if state in ("IDLE", "RUNNING") and runner.HasField("state_since"):
                ready.append(runner.state_since.ToNanoseconds() / 1e9)
        return Sample(
            t=t, queue=size.size,
            in_flight=sum(len(r.in_flight_request_ids) for r in runners.runners),
            states=dict(states),
            most_on_one_runner=max((len(r.in_flight_request_ids) for r in runners.runners),
                                   default=0),
            first_ready_wall=min(ready, default=None),
        )


# -- the summary ----------------------------------------------------------------------------


def app_settings(sleep_s: float) -> dict[str, Any]:
    sys.path.insert(0, str(APP.parent))
    try:
        from autoscale_app import AutoscaleApp
    finally:
        sys.path.pop(0)
    return {"app": AutoscaleApp.app_name, "max_concurrency": AutoscaleApp.max_concurrency,
            "max_multiplexing": AutoscaleApp.max_multiplexing,
            "keep_alive_s": AutoscaleApp.keep_alive, "sleep_s": sleep_s}


def summarise(run: Run, trace: list[Phase], settings: dict[str, Any]) -> dict[str, Any]:
    samples = run.samples
    first_submit = run.submits[0] if run.submits else None
    last_submit = run.submits[-1] if run.submits else None
    last_completion = max(run.completions, default=None)
    first_ready = None
    if first_submit is not None:
        for s in samples:
            if s.t >= first_submit and (s.states.get("IDLE", 0) or s.states.get("RUNNING", 0)):
                # The runner's state_since bounds the moment better than the sample's time
                # (a ready runner takes queued work at once, so it is seldom seen IDLE).
                since = None if s.first_ready_wall is None else s.first_ready_wall - run.t0_wall
                first_ready = min(s.t, max(since, first_submit)) if since is not None else s.t
                break
    zero_at = None
    if last_completion is not None:
        zero_at = next((s.t for s in samples if s.t > last_completion and s.runners == 0), None)
    return {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "machine": machine(),
        "app": settings,
        "trace": [asdict(p) for p in trace],
        "phases": [{"name": n, "start_s": _r(a), "end_s": _r(b)} for n, a, b in run.phases],
        "sample_s": SAMPLE_S,
        "samples": len(samples),
        "requests": {"submitted": len(run.submits), "completed": len(run.completions),
                     "failed": len(run.failures), "failures": run.failures[:10]},
        "first_request_to_ready_runner_s": _since(first_ready, first_submit),
        "peak_runners": max((s.runners for s in samples), default=0),
        "peak_queue_depth": max((s.queue for s in samples), default=0),
        "peak_in_flight": max((s.in_flight for s in samples), default=0),
        "most_in_flight_on_one_runner": max((s.most_on_one_runner for s in samples), default=0),
        "states_seen": [st for st in STATES if any(st in s.states for s in samples)],
        "last_submit_to_zero_runners_s": _since(zero_at, last_submit),
        "last_completion_to_zero_runners_s": _since(zero_at, last_completion),
    }


def _since(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else _r(later - earlier)


def _r(x: float) -> float:
    return round(x, 2)


def _commit() -> str | None:
    """The commit measured, with `-dirty` when the working tree had uncommitted changes."""
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def series(run: Run) -> dict[str, Any]:
    seen = [st for st in STATES if any(st in s.states for s in run.samples)]
    return {
        "t": [_r(s.t) for s in run.samples],
        "queue": [s.queue for s in run.samples],
        "in_flight": [s.in_flight for s in run.samples],
        "runners": {st: [s.states.get(st, 0) for s in run.samples] for st in seen},
    }


def write_json(path: Path, summary: dict[str, Any], run: Run) -> None:
    """The summary indented, the series one compact line each (the file stays readable)."""
    lines = json.dumps(summary, indent=2).rstrip("}\n").rstrip()
    data = series(run)
    body = ",\n".join(f'    "{key}": {json.dumps(value, separators=(",", ":"))}'
                      for key, value in data.items() if key != "runners")
    runners = ",\n".join(f'      "{st}": {json.dumps(v, separators=(",", ":"))}'
                         for st, v in data["runners"].items())
    text = f'{lines},\n  "series": {{\n{body},\n    "runners": {{\n{runners}\n    }}\n  }}\n}}\n'
    json.loads(text)  # it must stay valid JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_table(summary: dict[str, Any]) -> None:
    req, app = summary["requests"], summary["app"]
    rows = [
        ("requests submitted / completed / failed",
         f"{req['submitted']} / {req['completed']} / {req['failed']}"),
        ("first request to first ready runner",
         _seconds(summary, "first_request_to_ready_runner_s")),
        ("peak runners", f"{summary['peak_runners']} (max_concurrency {app['max_concurrency']})"),
        ("peak queue depth", str(summary["peak_queue_depth"])),
        ("peak in flight", str(summary["peak_in_flight"])),
        ("most in flight on one runner",
         f"{summary['most_in_flight_on_one_runner']} (max_multiplexing "
         f"{app['max_multiplexing']})"),
        ("last submit to zero runners", _seconds(summary, "last_submit_to_zero_runners_s")),
        ("last completion to zero runners",
         f"{_seconds(summary, 'last_completion_to_zero_runners_s')} (keep_alive "
         f"{app['keep_alive_s']:g} s)"),
        ("runner states seen", ", ".join(summary["states_seen"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _seconds(summary: dict[str, Any], key: str) -> str:
    value = summary[key]
    return "never" if value is None else f"{value:.2f} s"


# -- the picture ----------------------------------------------------------------------------


def _label(name: str, phase: Phase) -> str:
    what = []
    if phase.burst:
        what.append(f"{phase.burst} at once")
    if phase.rate:
        what.append(f"{phase.rate:g} req/s")
    if phase.until_no_runners:
        what.append("until no runner is left")
    return name + ("\n" + ", ".join(what) if what else "")


def draw(path: Path, run: Run, summary: dict[str, Any], trace: list[Phase]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = run.samples
    t = [s.t for s in samples]
    app = summary["app"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(13, 7.5),
                                      gridspec_kw={"height_ratios": [3, 2]})
    seen = summary["states_seen"]
    top.stackplot(t, *[[s.states.get(st, 0) for s in samples] for st in seen], labels=seen,
                  colors=[COLOURS[st] for st in seen], step="post", alpha=0.9)
    top.axhline(app["max_concurrency"], color="black", linestyle="--", linewidth=1,
                label=f"max_concurrency ({app['max_concurrency']})")
    top.set_ylabel("runners (stacked by state)")
    top.set_ylim(0, app["max_concurrency"] + 1.2)
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="runner state",
               title_fontsize=8)

    bottom.step(t, [s.queue for s in samples], where="post", color="#1f77b4",
                label="queue depth (QueueSize)")
    bottom.step(t, [s.in_flight for s in samples], where="post", color="#ff7f0e",
                label="requests in flight (on runners)")
    capacity = app["max_concurrency"] * app["max_multiplexing"]
    bottom.axhline(capacity, color="#ff7f0e", linestyle=":", linewidth=1,
                   label=f"most in flight: {capacity}\n(max_concurrency x max_multiplexing)")
    bottom.set_ylabel("requests")
    bottom.set_xlabel("seconds since the trace began")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    bottom.set_ylim(bottom=0)
    bottom.yaxis.get_major_locator().set_params(integer=True)

    for i, ((name, start, end), phase) in enumerate(zip(run.phases, trace, strict=False)):
        for ax in (top, bottom):
            ax.axvspan(start, end, color="#000000", alpha=0.05 if i % 2 else 0.0, linewidth=0)
            ax.axvline(start, color="grey", linewidth=0.6)
        top.text((start + end) / 2, app["max_concurrency"] + 0.6, _label(name, phase),
                 ha="center", va="center", fontsize=8, color="dimgrey")
    for ax in (top, bottom):
        ax.set_xlim(0, t[-1] if t else 1)
        ax.grid(axis="y", alpha=0.3)

    req = summary["requests"]
    fig.suptitle(
        f"falrt autoscaling: app with max_concurrency={app['max_concurrency']}, "
        f"max_multiplexing={app['max_multiplexing']}, keep_alive={app['keep_alive_s']:g} s, "
        f"each request sleeps {app['sleep_s']:g} s", fontsize=11)
    top.set_title(
        f"{req['completed']}/{req['submitted']} requests completed; first ready runner "
        f"{_seconds(summary, 'first_request_to_ready_runner_s')} after the first request; "
        f"peak {summary['peak_runners']} runners; zero runners "
        f"{_seconds(summary, 'last_completion_to_zero_runners_s')} after the last completion",
        fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------


async def run_all(trace: list[Phase], sleep_s: float, app_name: str, keep: Path | None) -> Run:
    with contextlib.ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="falrt-autoscale-")))
        else:
            root = keep
            root.mkdir(parents=True, exist_ok=True)
        try:
            async with falrt_server(root / "data", root / "server.log") as address:
                endpoint_id = await deploy(address, APP_TARGET)
                print(f"-- deployed {endpoint_id} on {address}; replaying", file=sys.stderr)
                async with aio_channel(address) as ch:  # it carries the server's admin key
                    return await Replay(ch, endpoint_id, app_name, sleep_s).replay(trace)
        except BaseException:
            log = root / "server.log"
            if log.exists():
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description="falrt autoscaling over a replayed trace")
    parser.add_argument("--quick", action="store_true", help="a short trace (a smoke run)")
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each request sleeps")
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "autoscale.png")
    parser.add_argument("--out-json", type=Path, default=REPO / "bench" / "autoscale.json")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the server's data and logs (runner logs too) in DIR")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401 - checked before any server starts
    except ImportError:
        sys.exit("bench/autoscale.py needs matplotlib: pip install -e '.[bench]'")
    trace = QUICK_TRACE if args.quick else TRACE
    settings = app_settings(args.sleep)
    try:
        run = uvloop.run(guarded(run_all(trace, args.sleep, settings["app"], args.keep)))
    except asyncio.CancelledError:
        sys.exit("interrupted; the server it started was stopped")
    summary = summarise(run, trace, settings)
    write_json(args.out_json, summary, run)
    draw(args.out_png, run, summary, trace)
    print_table(summary)
    print(f"-- wrote {args.out_png} and {args.out_json}", file=sys.stderr)


if __name__ == "__main__":
    main()
