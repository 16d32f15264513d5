"""`local_server`: a real `falrt server` subprocess for integration tests.

The server listens on a port the OS picks (127.0.0.1), keeps its state in a data directory
of the test's own, and writes its admin key to a credentials file of its own (never the
user's `~/.config/falrt/credentials.json`); deploys go through the real `falrt` CLI and
calls through the real clients. On exit the server gets SIGTERM (its runners stop with it)
and is killed if it has not exited within `stop_timeout_s`. `falrt run` starts its private
server with it too (`new_session=True`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from falrt.client import credentials
from falrt.client.sync import SyncClient

__all__ = ["LocalServer", "local_server"]

LISTENING = re.compile(r"falrt server listening on (\S+):(\d+)")
# The lines the other listeners (the HTTP edge's) print before the gRPC one.
OTHER_LISTENER = re.compile(r"falrt (\S+) listening on (\S+)")


def falrt_command() -> str:
    """The `falrt` script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "falrt"
    if beside.exists():
        return str(beside)
    found = shutil.which("falrt")
    if found is None:
        raise FileNotFoundError("no `falrt` command beside this Python or on PATH")
    return found


@dataclass
class LocalServer:
    """A running local server: where it listens, and how to deploy to and call it."""

    address: str
    root: Path
    env: dict[str, str] = field(repr=False)
    log_path: Path
    # The server's other listeners by name (`http` with `--http-listen`): HOST:PORT.
    listeners: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The admin key the server recorded for its address."""
        path = Path(self.env[credentials.FILE_ENV])
        if not path.exists():
            return None
        servers = json.loads(path.read_text()).get("servers", {})
        key: str | None = servers.get(credentials.normalise(self.address))
        return key

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Runs the `falrt` CLI against this server; raises RuntimeError (with the CLI's
        output and the server's log) when it exits non-zero."""
        result = subprocess.run(
            [falrt_command(), *args, "--host", self.address], capture_output=True,
            text=True, timeout=timeout, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(
                f"falrt {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\nserver log:\n{self.log()[-3000:]}")
        return result

    def deploy(self, target: str, *options: str) -> str:
        """Deploys `file.py::Class` (with CLI `options`); returns its endpoint id
        (`owner/app`)."""
        lines = self.cli("deploy", target, *options).stdout.strip().splitlines()
        return lines[-1].strip()

    def client(self) -> SyncClient:
        """A SyncClient of this server with its admin key (close it, or use `with`)."""
        return SyncClient(self.address, key=self.key)

    def log(self) -> str:
        """The server's log (its standard error) so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""


@contextmanager
def local_server(
    root: Path, *, extra_args: Sequence[str] = (), start_timeout_s: float = 30.0,
    stop_timeout_s: float = 30.0, new_session: bool = False,
) -> Iterator[LocalServer]:
    """Starts `falrt server` under `root` (a test's `tmp_path`) and stops it at exit.

    `new_session`: the server runs in a session of its own, so that a Ctrl-C typed in the
    terminal reaches only this process (`falrt run`), which then stops the server in order.
    Raises RuntimeError (with the server's log) when it has not reported its address
    within `start_timeout_s`, or exited first.
    """
    root.mkdir(parents=True, exist_ok=True)
    env = _env(root / "credentials.json")
    log_path = root / "server.log"
    with open(log_path, "a") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [falrt_command(), "server", "--listen", "127.0.0.1:0", "--data-dir",
             str(root / "data"), *extra_args],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            start_new_session=new_session)
    try:
        listeners: dict[str, str] = {}
        address = _wait_listening(proc, start_timeout_s, log_path, listeners)
        yield LocalServer(address, root, env, log_path, listeners)
    finally:
        _stop(proc, stop_timeout_s)


def _env(credentials_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FALRT_HOST", "FALRT_STORE", "FALRT_KEY")}
    env[credentials.FILE_ENV] = str(credentials_file)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_listening(
    proc: subprocess.Popen[str], timeout_s: float, log_path: Path, listeners: dict[str, str],
) -> str:
    """The address the server prints (the other listeners it reports first go into
    `listeners`); its stdout is read on a thread so that neither a silent server nor a full
    pipe blocks the test."""
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"falrt-server-{proc.pid}", daemon=True).start()
    try:
        while (line := lines.get(timeout=timeout_s)) is not None:
            if match := LISTENING.search(line):
                return f"{match.group(1)}:{match.group(2)}"
            if match := OTHER_LISTENER.search(line):
                listeners[match.group(1)] = match.group(2)
    except queue.Empty:
        pass
    raise RuntimeError(f"falrt server did not start within {timeout_s} s; log:\n"
                       f"{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """SIGTERM (the server stops its runners), then SIGKILL after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
