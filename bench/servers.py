"""The processes a benchmark measures, and the machine it runs on.

`process` runs a server (a bare baseline of bench/baselines.py, or `falrt server`) until
its block ends; `falrt_server` starts one falrt server and yields its address; `deploy`
deploys an app to it with the CLI. Every process gets its own log file, shown when it fails
to start, and is stopped (SIGTERM, then SIGKILL) however the block ends. `guarded` makes a
benchmark's SIGTERM or SIGINT a cancellation, so that those blocks do end.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from loadgen import Call

from falrt.gpus import discover

REPO = Path(__file__).resolve().parents[1]
BASELINES = Path(__file__).resolve().parent / "baselines.py"
START_DEADLINE_S = 120.0
DEPLOY_DEADLINE_S = 300.0  # building the mlp app's environment may install torch
RUNNER_DEADLINE_S = 300.0  # the mlp app's first runner may build its environment
LISTENING = r"listening on (\d+)"
T = TypeVar("T")


@contextlib.asynccontextmanager
async def process(
    argv: list[str], ready: str, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[re.Match[str]]:
    """Runs `argv` (output to `log`; `env` added to this process's environment) until the
    block ends; yields the match of the `ready` pattern in its output. SIGTERM at the end,
    SIGKILL if it lingers."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **(env or {})},
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


def baseline(kind: str) -> list[str]:
    """The command of one of bench/baselines.py's servers ("grpc-echo", "http-mlp", ...)."""
    return [sys.executable, str(BASELINES), kind]


def falrt_cli(*args: str) -> list[str]:
    """The `falrt` command on this interpreter, so that the server and its runners use it too
    (with torch, when this interpreter has it). -P: the installed falrt, not ./falrt of the
    working directory (which lacks falrt.cli and falrt.shim when falrt is installed whole)."""
    return [sys.executable, "-P", "-c", "from falrt.cli.main import main; main()", *args]


@contextlib.asynccontextmanager
async def falrt_server(
    data_dir: Path, log: Path, *options: str, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A `falrt server` on a free local port, with its data in `data_dir`; yields its
    address. `options` are more of its flags (`--store postgresql://...`), `env` more
    environment variables (its runners inherit them, less FALRT_* and PYTHONPATH)."""
    argv = falrt_cli("server", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *options)
    async with process(argv, r"falrt server listening on (\S+)", log, env) as ready:
        yield ready.group(1)


async def cli(address: str, *args: str) -> str:
    """Runs the `falrt` CLI against the server at `address`; what it printed on stdout."""
    proc = await asyncio.create_subprocess_exec(
        *falrt_cli(*args), cwd=REPO, env={**os.environ, "FALRT_HOST": address},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    command = " ".join(("falrt", *args))
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEPLOY_DEADLINE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{command}: no answer within {DEPLOY_DEADLINE_S:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{err.decode()[-3000:]}")
    return out.decode()


async def deploy(address: str, target: str) -> str:
    """Deploys `target` with the CLI; the endpoint id it prints."""
    lines = (await cli(address, "deploy", target)).split()
    if not lines:
        raise RuntimeError(f"falrt deploy {target} printed no endpoint id")
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


async def guarded(work: Coroutine[Any, Any, T]) -> T:
    """Awaits `work`, cancelled by SIGTERM or SIGINT so that every server it started is
    stopped (the caller sees `asyncio.CancelledError`)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await work


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        # its version only: importing torch costs seconds and memory this process does not need
        info["torch"] = importlib.metadata.version("torch")
    info["gpus"] = [gpu.name for gpu in discover()]  # NVML's; none without a GPU
    return info


# An app the queue benchmarks submit to: it never runs (max_concurrency 0), so each request
# is stored durably and stays queued (bench/queue_bench.py, bench/gateway.py write it to a file).
PARKED_APP = '''"""Runs nothing: with max_concurrency 0 no runner starts, so submits stay queued."""

import msgspec

import falrt


class Payload(msgspec.Struct):
    value: int = 0


class Parked(falrt.App):
    app_name = "parked"
    max_concurrency = 0

    @falrt.endpoint("/")
    async def echo(self, request: Payload) -> Payload:
        return request
'''
