"""Real parts for end-to-end tests: a `falrt server` subprocess, the `falrt` CLI, waiting.

Nothing here mocks anything: the server is the installed `falrt server` command on a
port the OS picked, with its own data directory (a real SQLite file), and it starts real
runner subprocesses.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
FALRT = str(Path(sys.executable).parent / "falrt")
LISTENING = re.compile(r"falrt server listening on (\S+):(\d+)")
# Set in a server's environment only. Runners inherit it (backends drop FALRT_* variables
# only), and so do their children: a process that still has it once its server has exited
# is a leak.
TAG_VARIABLE = "TESTS_HARNESS_SERVER"
LEAK_GRACE_S = 10.0  # a runner dies with its server, but the kernel reaps it a moment later


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
    A fixture that starts one ends with `stop_cleanly(server)`, not `server.stop()`.
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
        self.tag = uuid.uuid4().hex  # marks this server's runners; see TAG_VARIABLE
        self.output: list[str] = []  # the lines of stdout read so far
        self._lines: queue.SimpleQueue[str | None] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Starts the server and returns once it reports its address.

        Fails within `timeout` seconds even when the server prints nothing (its stdout is
        read on a thread), and at once when it exits; either way the server is gone and
        the failure carries its log.
        """
        store = ["--store", self.store] if self.store else []
        with open(self.log_path, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [FALRT, "server", "--listen", self.listen, "--data-dir", str(self.data_dir),
                 *store, *self.extra],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env={**_env(), TAG_VARIABLE: self.tag},
            )
        self._lines = _read_lines(self.proc)
        self.output = []  # (a restarted server prints its addresses again)
        try:
            match = self.wait_for_output(LISTENING, timeout)
        except AssertionError:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            raise
        self.address = f"{match.group(1)}:{match.group(2)}"
        return self

    def wait_for_output(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` in a line the server printed on stdout (one already
        read, else the next ones); fails after `timeout` seconds, and at once when the
        server's stdout closes first. Other listeners' lines (`falrt http listening on
        HOST:PORT`) are read with it."""
        assert self._lines is not None, "the server was not started"
        for line in self.output:
            if match := pattern.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # stdout closed: the server exited
                self._lines.put(None)  # for the next reader too
                code = self.proc.wait(timeout=10) if self.proc else None
                raise AssertionError(f"server exited {code} before printing {pattern.pattern!r}"
                                     f"; log:\n{self.log()}")
            self.output.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError(f"server did not print {pattern.pattern!r} within {timeout} s; "
                             f"log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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

    def leftovers(self) -> list[str]:
        """Processes other than the server that carry this server's tag: its runners and
        whatever they started ("pid: command line"); empty once all of them have exited."""
        return [f"{pid}: {cmdline}" for pid, cmdline in _tagged(self.tag)
                if self.proc is None or pid != self.proc.pid]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None,
        host_last: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the `falrt` CLI against this server (`input`: its standard input); `--host`
        goes before the subcommand, or after the arguments (`host_last`), as people type it."""
        host = ["--host", self.address]
        result = subprocess.run(
            [FALRT, *args, *host] if host_last else [FALRT, *host, *args], input=input,
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


def stop_cleanly(*servers: ServerProcess) -> None:
    """The teardown of a fixture's servers: stops every one (SIGTERM, then waits), then
    fails unless each exited 0 and, within LEAK_GRACE_S, left no runner or runner child
    behind. All are stopped before anything is checked, so one failure leaks no server."""
    codes: list[int | str] = []
    for server in servers:
        try:
            codes.append(server.stop())
        except subprocess.TimeoutExpired:  # stop() killed it
            codes.append("nothing: it did not stop within 30 s and was killed")
    for server, code in zip(servers, codes, strict=True):
        assert code == 0, f"server exited {code} on SIGTERM; log:\n{server.log()[-3000:]}"
    for server in servers:
        _assert_nothing_left(server)


def _assert_nothing_left(server: ServerProcess) -> None:
    try:
        wait_for(lambda: not server.leftovers(), timeout=LEAK_GRACE_S)
    except AssertionError:
        raise AssertionError(
            f"processes outlived their server by {LEAK_GRACE_S} s:\n"
            + "\n".join(server.leftovers()) + f"\nserver log:\n{server.log()[-3000:]}"
        ) from None


def _read_lines(proc: subprocess.Popen[str]) -> queue.SimpleQueue[str | None]:
    """Each line of `proc`'s stdout, then None when it closes; read on a daemon thread, so
    the server never blocks on a full pipe and a reader of the queue can give up in time."""
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"stdout-{proc.pid}", daemon=True).start()
    return lines


def _tagged(tag: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose environment has TAG_VARIABLE=`tag`
    (those of other users are unreadable, so never listed)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        found.append((int(entry.name), cmdline.strip()))
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FALRT_HOST", None)
    env.pop("FALRT_STORE", None)  # a server uses the store its test names
    env.pop(TAG_VARIABLE, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
