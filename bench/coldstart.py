"""Cold starts: how long until a deployed app answers, on the process, docker and ray backends.

    python bench/coldstart.py [--quick] [--reps 5] [--no-docker] [--ray] [--no-zygote]
                              [--out FILE.json]

Two measurements, each repeated (`--reps`, 5; `--quick`: 1) and reported as median, min and
max, on one `falrt server` per backend (`--backend process`, then `--backend docker
--docker-base` the image `falrt images build-base --ca-bundle … --output json` prints, then
with `--ray` `--backend ray` on a two-node Ray cluster of this machine started by
tests/raycluster.py: a head with no CPUs and one node with 2 CPUs and `falrt-S: 2`):

- `deploy`: from the start of `falrt deploy` (the CLI process) to the first result of a call
  (`Queue.Run`) to the app it deployed. Every repetition deploys a new app (examples/hello.py
  with its `app_name` changed, so no runner of it is alive), so the time covers the CLI, the
  upload, the environment (built or cached), the first runner's start and the call.
- `zero`: from a request to an app at zero runners to its result. The app is deployed and has
  served; its runners are killed (`falrt runners kill`) and the runner list is polled until
  none is left; then one call is timed. The environment is cached (it was built at deploy).

Apps: `hello` (examples/hello.py, no requirements) and `six` (the same code with
`requirements = ["six…"]`). What "cached" means:

- `hello`: always cached. Process backend: an app without requirements runs on the server's
  own interpreter, nothing is built. Docker backend: the environment image of no requirements
  (base + shim venv + falrt's sources) was built by a warm-up deploy before any timing.
- `six, cached`: the requirement `six` whose environment (process: venv under the data dir;
  docker: `falrt-env:<key>` image) a warm-up deploy built before the timings.
- `six, not cached`: a requirements set the server and the engine have never seen, unique
  per repetition and per run: `six>=1.0,!=0.0.<nonce>.<rep>` (the `!=` clause excludes no real
  version, so pip installs the latest six, but the set's hash, hence the environment key, is
  new). Process backend: a new venv is created and pip installs six (pip's own download
  cache on the host may serve the wheel). Docker backend: the requirements layer and falrt's
  sources layer are built (pip in the build container downloads six from the index); the
  base image and the shim-venv layer below them are cached by the engine, as they are for
  every app on a host that has built one before.

The process backend forks runners from a warm zygote (falrt/backends/zygote.py) unless
`--no-zygote`, which passes that option to its server (for A/B runs).

Calls carry the server's API key (the client reads the credentials file the server wrote).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from servers import REPO, deploy, falrt_cli, falrt_server, guarded, machine

from falrt.client import AsyncClient
from falrt.client.control import ControlClient
from falrt.errors import FalrtError

HELLO = REPO / "examples" / "hello.py"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
INPUT = {"name": "coldstart"}
OUTPUT = {"greeting": "Hello, coldstart!"}
CALL_DEADLINE_S = 300.0
GONE_DEADLINE_S = 60.0
BASE_DEADLINE_S = 600.0
TARGETS_ZERO_HELLO_S = {"process": 1.5, "docker": 3.0}
# Issue 18's tighter goals for the same case, reported (not failed on: one sample on a
# shared machine is too noisy for a gate of a tenth of a second).
GOALS_ZERO_HELLO_S = {"process": 0.10, "docker": 0.25}
# The ray backend's target is relative (issue 17): at most this much more than the process
# backend's median in the same run.
RAY_EXTRA_S = 1.5
RAY_NODES = {"s": {"num_cpus": 2, "resources": {"falrt-S": 2}}}
RAY_START_DEADLINE_S = 120.0


def app_source(name: str, requirements: list[str] | None) -> str:
    """examples/hello.py as app `name`, with `requirements` when given."""
    text = HELLO.read_text()
    assert 'app_name = "hello"' in text
    line = f'app_name = "{name}"'
    if requirements is not None:
        line += f"\n    requirements = {requirements!r}"
    return text.replace('app_name = "hello"', line)


class Bench:
    """One backend's server: writes app variants, deploys them, times calls."""

    # The control calls are blocking (short, and nothing else runs meanwhile).

    def __init__(self, backend: str, address: str, tmp: Path, run_id: str) -> None:
        self.backend = backend
        self.address = address
        self.tmp = tmp
        self.run_id = run_id
        self.count = 0
        self.client = AsyncClient(address)
        self.control = ControlClient(address)

    async def close(self) -> None:
        await self.client.close()
        self.control.close()

    def target(self, requirements: list[str] | None) -> tuple[str, str]:
        """A new app (file and class) of hello's code; its name."""
        self.count += 1
        name = f"cs-{self.backend}-{self.count}"
        path = self.tmp / f"{name.replace('-', '_')}.py"  # a module name
        path.write_text(app_source(name, requirements))
        return f"{path}::Hello", name

    async def first_result(self, endpoint_id: str) -> tuple[Any, int]:
        """Calls until one returns (a call that finds no runner may fail while one starts);
        the output and the number of calls made."""
        deadline = time.monotonic() + CALL_DEADLINE_S
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self.client.run(endpoint_id, INPUT, timeout=CALL_DEADLINE_S), attempts
            except FalrtError:
                if time.monotonic() > deadline:
                    raise

    async def deploy_to_result(self, requirements: list[str] | None) -> tuple[dict[str, Any], str]:
        target, name = self.target(requirements)
        start = time.perf_counter()
        endpoint_id = await deploy(self.address, target)
        deployed = time.perf_counter()
        output, attempts = await self.first_result(endpoint_id)
        done = time.perf_counter()
        return {"s": done - start, "deploy_cli_s": deployed - start,
                "output_ok": output == OUTPUT, "calls": attempts}, name

    async def kill_all(self, app: str) -> None:
        """Kills the app's runners; returns once the runner list shows none."""
        deadline = time.monotonic() + GONE_DEADLINE_S
        while True:
            runners = self.control.list_runners(app)
            if not runners:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app}: runners still listed after {GONE_DEADLINE_S:.0f} s")
            for runner in runners:
                with contextlib.suppress(FalrtError):  # it ended meanwhile
                    self.control.kill_runner(runner.runner_id)
            await asyncio.sleep(0.05)  # the poll interval of a wait with a deadline

    async def zero_to_result(self, app: str, endpoint_id: str) -> dict[str, Any]:
        await self.kill_all(app)
        start = time.perf_counter()
        output, attempts = await self.first_result(endpoint_id)
        return {"s": time.perf_counter() - start, "output_ok": output == OUTPUT,
                "calls": attempts}


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    times = [sample["s"] for sample in samples]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "n": len(times), "output_ok": all(sample["output_ok"] for sample in samples),
            "samples": samples}


async def measure_backend(bench: Bench, reps: int, progress: Callable[[str], None]
                          ) -> dict[str, Any]:
    """The cases of one backend, keyed `<measurement>/<app>/<cached|not_cached>`."""
    results: dict[str, Any] = {}
    # Warm-up deploys: build (or find) the environments the cached cases use.
    progress(f"{bench.backend}: warm-up deploys (hello, six)")
    _, hello_app = await bench.deploy_to_result(None)
    await bench.kill_all(hello_app)
    _, six_app = await bench.deploy_to_result(["six"])
    await bench.kill_all(six_app)

    cases: list[tuple[str, list[str] | None]] = [
        ("deploy/hello/cached", None), ("deploy/six/cached", ["six"]),
        ("deploy/six/not_cached", None)]
    for key, requirements in cases:
        samples = []
        for rep in range(reps):
            reqs = requirements
            if key.endswith("not_cached"):
                reqs = [f"six>=1.0,!=0.0.{bench.run_id}.{rep}"]
            sample, app = await bench.deploy_to_result(reqs)
            await bench.kill_all(app)
            samples.append(sample)
            progress(f"{bench.backend} {key} #{rep + 1}: {sample['s']:.2f} s")
        results[key] = summary(samples)

    for key, app in (("zero/hello/cached", hello_app), ("zero/six/cached", six_app)):
        endpoint_id = f"local/{app}"
        samples = []
        for rep in range(reps):
            sample = await bench.zero_to_result(app, endpoint_id)
            samples.append(sample)
            progress(f"{bench.backend} {key} #{rep + 1}: {sample['s']:.2f} s")
        await bench.kill_all(app)
        results[key] = summary(samples)
    return results


def docker_engine() -> str | None:
    """None when a Docker engine answers; otherwise why not. Asked in a child process, with
    a timeout that holds even when the SDK's own call hangs."""
    probe = "import docker; docker.from_env(timeout=10).ping()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                              text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "no Docker engine answers (no answer within 30 s); run scripts/docker.sh"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine answers ({last}); run scripts/docker.sh"
    return None


def base_image() -> str:
    """The docker backend's base image (built once, then reused in about 0.1 s)."""
    argv = falrt_cli("images", "build-base", "--ca-bundle", CA_BUNDLE, "--output", "json")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                          timeout=BASE_DEADLINE_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"falrt images build-base failed:\n{done.stderr[-3000:]}")
    return str(json.loads(done.stdout)["ref"])


@contextlib.asynccontextmanager
async def ray_cluster() -> AsyncIterator[str]:
    """A Ray cluster of this machine (tests/raycluster.py); yields its GCS address."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.raycluster", json.dumps(RAY_NODES), cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), RAY_START_DEADLINE_S)
        yield str(json.loads(line)["address"])
    finally:
        proc.stdin.close()  # the helper shuts its cluster down
        await proc.wait()


async def run_all(reps: int, docker: bool, progress: Callable[[str], None],
                  ray: bool = False, zygote: bool = True) -> dict[str, Any]:
    run_id = str(uuid.uuid4().int % 10**12)  # digits: it goes into a version
    report: dict[str, Any] = {"reps": reps, "run_id": run_id, "backends": {}, "skipped": {},
                              "zygote": zygote}
    backends: list[tuple[str, list[str]]] = [("process", [] if zygote else ["--no-zygote"])]
    if docker:
        reason = docker_engine()
        if reason is None:
            base = base_image()
            report["docker_base"] = base
            backends.append(("docker", ["--backend", "docker", "--docker-base", base,
                                        "--reconnect-window", "0"]))  # stop with the server
        else:
            report["skipped"]["docker"] = reason
            progress(f"docker: skipped: {reason}")
    else:
        report["skipped"]["docker"] = "--no-docker"
    with tempfile.TemporaryDirectory(prefix="falrt-coldstart-") as tmp_name:
        tmp = Path(tmp_name)
        for backend, options in backends:
            await measure_server(report, backend, options, tmp, progress)
        if ray:
            async with ray_cluster() as address:
                progress(f"ray: a Ray cluster at {address}")
                await measure_server(report, "ray", ["--backend", "ray", "--ray-address",
                                                     address], tmp, progress)
        else:
            report["skipped"]["ray"] = "no --ray"
    report["targets"] = targets(report)
    report["goals"] = goals(report)
    return report


async def measure_server(report: dict[str, Any], backend: str, options: list[str], tmp: Path,
                         progress: Callable[[str], None]) -> None:
    """The cases of one backend, on a server of its own, into `report`."""
    root = tmp / backend
    root.mkdir()
    async with falrt_server(root / "data", root / "server.log", *options) as address:
        progress(f"{backend}: falrt server at {address}")
        bench = Bench(backend, address, root, report["run_id"])
        try:
            report["backends"][backend] = await measure_backend(bench, report["reps"],
                                                                progress)
        finally:
            await bench.close()


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: hello, cached, from a request at zero runners (median)."""
    out = {}
    limits = dict(TARGETS_ZERO_HELLO_S)
    process = report["backends"].get("process", {}).get("zero/hello/cached")
    if "ray" in report["backends"] and process is not None:
        limits["ray"] = round(process["median_s"] + RAY_EXTRA_S, 2)
    for backend, limit in limits.items():
        case = report["backends"].get(backend, {}).get("zero/hello/cached")
        if case is None:
            out[backend] = {"target_s": limit, "median_s": None, "holds": None}
        else:
            out[backend] = {"target_s": limit, "median_s": case["median_s"],
                            "holds": case["median_s"] < limit}
    return out


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's goals for the same case: median at most the goal, where measured."""
    out = {}
    for backend, limit in GOALS_ZERO_HELLO_S.items():
        case = report["backends"].get(backend, {}).get("zero/hello/cached")
        if case is not None:
            out[backend] = {"goal_s": limit, "median_s": case["median_s"],
                            "holds": case["median_s"] <= limit}
    return out


def table(report: dict[str, Any]) -> str:
    lines = ["| backend | from | app | environment | median s | min s | max s | n |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for backend, cases in report["backends"].items():
        for key, case in cases.items():
            what, app, env = key.split("/")
            start = "`falrt deploy`" if what == "deploy" else "zero runners"
            lines.append(f"| {backend} | {start} | {app} | {env.replace('_', ' ')} | "
                         f"{case['median_s']:.2f} | {case['min_s']:.2f} | {case['max_s']:.2f} "
                         f"| {case['n']} |")
    for backend, target in report["targets"].items():
        if target["holds"] is None:
            verdict = f"not measured ({report['skipped'].get(backend, '')})"
        else:
            verdict = (f"median {target['median_s']:.2f} s: "
                       + ("holds" if target["holds"] else "DOES NOT HOLD"))
        lines.append(f"target {backend}, hello, cached, from zero runners, under "
                     f"{target['target_s']} s: {verdict}")
    for backend, goal in report.get("goals", {}).items():
        lines.append(f"goal (issue 18) {backend}, the same case, at most {goal['goal_s']} s: "
                     f"median {goal['median_s']:.3f} s: "
                     + ("holds" if goal["holds"] else "does not hold"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    parser.add_argument("--no-docker", action="store_true", help="no docker backend")
    parser.add_argument("--ray", action="store_true",
                        help="the ray backend too, on a Ray cluster of this machine")
    parser.add_argument("--no-zygote", action="store_true",
                        help="the process backend's server without zygotes (A/B runs)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 5)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    report = asyncio.run(guarded(run_all(reps, not args.no_docker, progress, args.ray,
                                          not args.no_zygote)))
    report["machine"] = machine()
    report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                      capture_output=True, text=True, check=False).stdout.strip()
    report["wall_s"] = time.monotonic() - started
    print(table(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
