"""`make run` and `make stop`: a local falrt server with the hello example deployed.

    python scripts/run_local.py           # start (or reuse) the server, deploy, print how to call
    python scripts/run_local.py --stop    # stop the server started here

The server runs in the background with its data in `.falrt-local/` of the repository; its
output goes to `.falrt-local/server.log`, and `.falrt-local/server.json` records its pid and
address so that a later `make run` reuses it and `make stop` finds it. Only the standard
library and the `falrt` command are used, so this runs before anything else is importable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = REPO / ".falrt-local"
LOG = STATE_DIR / "server.log"
STATE = STATE_DIR / "server.json"
DEFAULT_LISTEN = "127.0.0.1:50051"
EXAMPLE = "examples/hello.py::Hello"
EXAMPLE_INPUT = '{"name": "world"}'
LISTENING = re.compile(r"falrt server listening on (\S+)")
START_DEADLINE_S = 60.0
DEPLOY_DEADLINE_S = 600.0
STOP_DEADLINE_S = 20.0


def use_state_dir(path: Path) -> None:
    """Where this run keeps the server's data, log and pid (set once, from the command line)."""
    global STATE_DIR, LOG, STATE
    STATE_DIR = path.resolve()
    LOG = STATE_DIR / "server.log"
    STATE = STATE_DIR / "server.json"


class RunError(Exception):
    """A step failed; the message says what to look at."""


def falrt_command() -> str:
    """The `falrt` entry point beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "falrt"
    return str(beside) if beside.exists() else "falrt"


def progress(text: str) -> None:
    """What this run is doing now, on stderr (stdout is the instructions at the end)."""
    print(text, file=sys.stderr, flush=True)


def display(path: str) -> str:
    """`path` relative to the repository when it lies inside it (for printed commands)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO))
    return path


# -- the state file and the process it names -------------------------------------------------


def read_state() -> dict[str, object] | None:
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def is_our_server(pid: int) -> bool:
    """Whether `pid` is alive and is a `falrt server` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"falrt" in part for part in cmdline) and b"server" in cmdline


def running_server() -> tuple[int, str] | None:
    """(pid, address) of the server a previous `make run` started, if it still runs."""
    state = read_state()
    if state is None:
        return None
    pid, address = state.get("pid"), state.get("address")
    if isinstance(pid, int) and isinstance(address, str) and is_our_server(pid):
        return pid, address
    return None


# -- starting -------------------------------------------------------------------------------


def port_is_free(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def start_server(listen: str) -> tuple[int, str]:
    """Starts `falrt server` detached from this process; returns (pid, address) once it
    listens. Raises RunError when it exits or stays silent past the deadline."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_start = LOG.stat().st_size if LOG.exists() else 0
    argv = [falrt_command(), "server", "--listen", listen, "--data-dir", str(STATE_DIR)]
    progress(f"starting a falrt server on {listen} in the background (log {display(str(LOG))})")
    with LOG.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal must not stop the server
        )
    address = wait_until_listening(proc, log_start)
    STATE.write_text(json.dumps({"pid": proc.pid, "address": address}))
    return proc.pid, address


def wait_until_listening(proc: subprocess.Popen[bytes], log_start: int) -> str:
    """The address the server reports in its log; each wait is on the process itself, so an
    early exit is seen at once."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        match = LISTENING.search(read_log(log_start))
        if match:
            return match.group(1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=0.1)
            raise RunError(f"falrt server exited with status {code}; see {display(str(LOG))}:\n"
                           + tail(read_log(log_start)))
    proc.kill()
    raise RunError(f"falrt server did not report listening within {START_DEADLINE_S:.0f} s; "
                   f"see {display(str(LOG))}")


def read_log(offset: int) -> str:
    with LOG.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_server(listen: str | None) -> tuple[int, str, bool]:
    """(pid, address, reused): the running server, or a new one."""
    running = running_server()
    if running is not None:
        return (*running, True)
    if listen is None:
        # The default port keeps the printed command short; another process may hold it.
        listen = DEFAULT_LISTEN if port_is_free(DEFAULT_LISTEN) else "127.0.0.1:0"
    return (*start_server(listen), False)


# -- deploying and printing -----------------------------------------------------------------


def deploy(address: str) -> str:
    """Deploys the hello example; its endpoint id (the last line `falrt deploy` prints)."""
    env = {**os.environ, "FALRT_HOST": address}
    progress(f"deploying {EXAMPLE} to {address}")
    try:
        done = subprocess.run(
            [falrt_command(), "deploy", EXAMPLE], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, text=True, timeout=DEPLOY_DEADLINE_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"falrt deploy did not finish within {DEPLOY_DEADLINE_S:.0f} s") from exc
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RunError(f"falrt deploy {EXAMPLE} failed (exit status {done.returncode})")
    return lines[-1]


def print_instructions(pid: int, address: str, reused: bool, endpoint_id: str) -> None:
    how = "reusing the running" if reused else "started a"
    host = "" if address == DEFAULT_LISTEN else f"FALRT_HOST={address} "
    falrt = display(falrt_command())
    print(f"{how} falrt server on {address} (pid {pid}, log {display(str(LOG))})")
    print(f"deployed {EXAMPLE} as {endpoint_id}")
    print()
    print("Call it through the queue (logs and queue position on stderr, output on stdout):")
    print(f"  {host}{falrt} call {endpoint_id} --data {shlex.quote(EXAMPLE_INPUT)}")
    print("Call it directly:")
    print(f"  {host}{falrt} call {endpoint_id} --sync --data {shlex.quote(EXAMPLE_INPUT)}")
    print("Stop the server:")
    print("  make stop")


def run(listen: str | None) -> None:
    pid, address, reused = ensure_server(listen)
    endpoint_id = deploy(address)
    print_instructions(pid, address, reused, endpoint_id)


# -- stopping -------------------------------------------------------------------------------


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Whether `pid` (not our child) exited within `timeout_s`; waits on a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def stop() -> None:
    running = running_server()
    if running is None:
        print("no falrt server from `make run` is running")
        STATE.unlink(missing_ok=True)
        return
    pid, address = running
    os.kill(pid, signal.SIGTERM)  # the server drains and stops its runners
    if wait_for_exit(pid, STOP_DEADLINE_S):
        print(f"stopped the falrt server on {address} (pid {pid})")
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        print(f"killed the falrt server on {address} (pid {pid}): it did not stop within "
              f"{STOP_DEADLINE_S:.0f} s")
    STATE.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop the server started here")
    parser.add_argument("--listen", help=f"HOST:PORT for a new server (default {DEFAULT_LISTEN})")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR,
                        help=f"data, log and pid of the server (default {display(str(STATE_DIR))})")
    args = parser.parse_args()
    use_state_dir(args.state_dir)
    try:
        if args.stop:
            stop()
        else:
            run(args.listen)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
