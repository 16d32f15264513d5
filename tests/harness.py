"""Real parts for end-to-end tests: a `falrt server` subprocess, the `falrt` CLI, waiting.

Nothing here mocks anything: the server is the installed `falrt server` command on a
port the OS picked, with its own data directory (a real SQLite file), and it starts real
runner subprocesses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
FALRT = str(Path(sys.executable).parent / "falrt")
LISTENING = re.compile(r"falrt server listening on (\S+):(\d+)")


def wait_for(condition: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds.

    Only for conditions that have no event to wait on (the state of another process).
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class ServerProcess:
    """A real `falrt server` subprocess. `address` is where it listens.

    `store` is passed as `--store` when given (a PostgreSQL DSN, say); else the default.
    """

    def __init__(
        self, data_dir: Path, log_path: Path, store: str = "", extra: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
    ) -> None:
        self.listen = listen
        self.data_dir = data_dir
        self.log_path = log_path
        self.store = store
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the server
        store = ["--store", self.store] if self.store else []
        self.proc = subprocess.Popen(
            [FALRT, "server", "--listen", self.listen, "--data-dir", str(self.data_dir), *store,
             *self.extra],
            stdout=subprocess.PIPE, stderr=log, text=True, env=_env(),
        )
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:  # the first line comes once the server is ready
            match = LISTENING.search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                return self
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"server did not start; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful shutdown path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Runs the `falrt` CLI against this server."""
        result = subprocess.run(
            [FALRT, "--host", self.address, *args],
            capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"falrt {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\nserver log:\n{self.log()[-3000:]}"
            )
        return result

    def deploy(self, target: str, *extra: str) -> str:
        """Deploys `file.py::Class` with the real CLI; returns the endpoint id it printed."""
        out = self.cli("deploy", target, *extra).stdout.strip().splitlines()
        return out[-1].strip()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FALRT_HOST", None)
    env.pop("FALRT_STORE", None)  # a server uses the store its test names
    env["PYTHONUNBUFFERED"] = "1"
    return env
