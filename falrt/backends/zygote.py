"""Warm templates of runners for the process backend: one zygote per interpreter.

A plain runner start spends about 0.15 s of CPU starting an interpreter and importing the
shim before the app's code runs. A zygote (`python -m falrt.shim.zygote`, shim/zygote.py
says how it works and why forking it is safe) has done that already and forks a runner on
request, so a start at zero runners skips it.

The first start of an interpreter's runner starts its zygote and goes the plain way (the
zygote is not warm yet); later starts fork. A start is never made to wait for a zygote: one
that is not ready, cannot take the runner's settings after fork (a variable the interpreter
or the dynamic loader reads at startup differs, see `STARTUP_VARIABLES`), fails to fork, or
has died goes the plain way. A zygote that dies after it was ready is started again at the
next start; one that dies before it is ready is not tried again for that interpreter.

Forked runners are the zygote's children, not the server's: the zygote reports each exit
(with its status) over the socket, and the server signals them through a pidfd. A runner
dies with its zygote and a zygote with the server, so none outlives the server; when a
zygote dies its runners die too (killed), and the fleet sees them exit as for any crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from falrt.backends.spawn import Child, spawn
from falrt.shim.zygote import (  # type: ignore[import-not-found]
    FD_VARIABLE,
    MAX_MESSAGE_BYTES,
    Exited,
    Failed,
    Fork,
    Forked,
    Ready,
    decode,
    encode,
)

log = logging.getLogger(__name__)

# Read once when a process starts (by the interpreter, the dynamic loader, libc's malloc,
# grpc's import): a runner whose value differs from its zygote's cannot be forked from it.
STARTUP_VARIABLES = ("PYTHON", "LD_", "MALLOC_", "GLIBC_TUNABLES", "GRPC_ENABLE_FORK_SUPPORT",
                     "LANG", "LC_")
FORK_TIMEOUT_S = 5.0  # a zygote that does not answer a fork in time is stopped
CLOSE_GRACE_S = 5.0


class ZygoteError(Exception):
    """A fork through a zygote failed; the runner is started the plain way."""


def startup_differs(env: Mapping[str, str], zygote_env: Mapping[str, str]) -> list[str]:
    """The startup variables whose values differ between `env` and `zygote_env`."""
    names = {name for name in (*env, *zygote_env) if name.startswith(STARTUP_VARIABLES)}
    return sorted(name for name in names if env.get(name) != zygote_env.get(name))


class ForkedChild:
    """A runner forked by a zygote: what `spawn.Child` is to a plain start. Loop-affine."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exit_code(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), once the runner has exited."""
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        """Signals the runner (or its process group). Does nothing once it has exited."""
        if self._exited.done():
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
            if group:  # (no group yet if it has not called setsid: it was signalled above)
                os.killpg(self._pid, sig)
        except ProcessLookupError:
            return

    def exited(self, code: int) -> None:
        """The zygote reaped it with exit status `code`."""
        if not self._exited.done():
            os.close(self._pidfd)
            self._exited.set_result(code)

    def orphaned(self) -> None:
        """Its zygote died, which kills it: it counts as killed once it has exited."""
        if not self._exited.done():
            self._loop.add_reader(self._pidfd, self._killed)

    def _killed(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self.exited(-signal.SIGKILL)


class Zygote:
    """One zygote process of one interpreter, and the runners it forked. Loop-affine."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.python = python
        self.env = env  # its environment (none of a runner's own variables)
        self.ready = False
        self.gone = False
        self._process: Child | None = None
        self._sock: socket.socket | None = None
        self._pending: dict[int, asyncio.Future[ForkedChild]] = {}
        self._children: dict[int, ForkedChild] = {}
        self._next_id = 0

    async def open(self) -> None:
        """Starts the zygote; returns once it is exec'd (it is ready later)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = await spawn(
                [self.python, "-m", "falrt.shim.zygote"], cwd=Path("/"), new_session=True,
                env=self.env | {FD_VARIABLE: str(theirs.fileno())},
                stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours, self._on_readable)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        return self._process.exit_code if self._process is not None else None

    async def fork(self, env: dict[str, str], cwd: str, log_file: IO[Any]) -> ForkedChild:
        """Forks a runner with environment `env` in `cwd`, its output to `log_file`.
        Raises ZygoteError (the runner was not started). A zygote that does not take the
        request or does not answer in time is stopped."""
        if not self.ready or self._sock is None:
            raise ZygoteError("the zygote is not ready")
        self._next_id += 1
        fork_id = self._next_id
        payload = encode(Fork(fork_id, env, cwd))
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ZygoteError(f"the runner's environment is too large ({len(payload)} bytes)")
        future = asyncio.get_running_loop().create_future()
        self._pending[fork_id] = future
        try:
            self._send(payload, log_file.fileno())
            return await asyncio.wait_for(asyncio.shield(future), FORK_TIMEOUT_S)
        except TimeoutError:
            self.stop()
            raise ZygoteError(
                f"the zygote did not fork within {FORK_TIMEOUT_S:g} s; stopped it") from None
        finally:
            self._pending.pop(fork_id, None)

    def _send(self, payload: bytes, log_fd: int) -> None:
        assert self._sock is not None
        try:
            socket.send_fds(self._sock, [payload], [log_fd])
        except BlockingIOError:  # it reads nothing: stuck
            self.stop()
            raise ZygoteError("the zygote takes no requests; stopped it") from None
        except OSError as exc:  # (too large for the socket, or the zygote is gone)
            raise ZygoteError(f"the fork request could not be sent: {exc}") from None

    def _on_readable(self) -> None:
        assert self._sock is not None
        while not self.gone:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, MAX_MESSAGE_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost()
                return
            self._on_message(data, fds)

    def _on_message(self, data: bytes, fds: list[int]) -> None:
        try:
            message = decode(data)
        except msgspec.MsgspecError:
            log.error("zygote %s sent a malformed message; stopping it", self.pid)
            message = None
        match message:
            case Ready():
                self.ready = True
                log.info("zygote %s of %s is ready", self.pid, self.python)
            case Forked(fork_id=fork_id, pid=pid) if len(fds) == 1:
                self._forked(fork_id, ForkedChild(pid, fds.pop()))
            case Failed(fork_id=fork_id, error=error):
                future = self._pending.get(fork_id)
                if future is not None and not future.done():
                    future.set_exception(ZygoteError(error))
            case Exited(pid=pid, code=code):
                child = self._children.pop(pid, None)
                if child is not None:
                    child.exited(code)
            case _:
                self.stop()
        for fd in fds:
            os.close(fd)

    def _forked(self, fork_id: int, child: ForkedChild) -> None:
        self._children[child.pid] = child
        future = self._pending.get(fork_id)
        if future is not None and not future.done():
            future.set_result(child)
        else:  # its fork timed out meanwhile: the runner was never handed out
            child.send_signal(signal.SIGKILL, group=True)

    def _lost(self) -> None:
        """The zygote exited (its runners die with it) or was stopped."""
        if self.gone:
            return
        self.gone = True
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock)
            self._sock.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ZygoteError("the zygote exited"))
        for child in self._children.values():
            child.orphaned()
        self._children.clear()

    def stop(self) -> None:
        """Stops the zygote (its runners die with it). Idempotent."""
        self._lost()
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Asks the zygote to exit (it goes once the socket is closed) and waits for it."""
        self._lost()
        if self._process is None:
            return
        try:
            await asyncio.wait_for(self._process.wait(), CLOSE_GRACE_S)
        except TimeoutError:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()


class Zygotes:
    """The process backend's zygotes, one per interpreter, started at its first use."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env  # every zygote's environment
        self._zygotes: dict[str, Zygote] = {}
        self._broken: set[str] = set()  # interpreters whose zygote died before it was ready
        self._closed = False

    async def forkable(self, python: str, env: Mapping[str, str]) -> Zygote | None:
        """The ready zygote of `python` that can fork a runner with environment `env`;
        None when there is none (the first call for `python` starts one)."""
        if self._closed:
            return None
        zygote = self._zygotes.get(python)
        if zygote is not None and zygote.gone:
            await zygote.close()  # (reaped already: it exited)
            if not zygote.ready:
                log.warning("the zygote of %s exited before it was ready (exit status %s); "
                            "runners of it start without one", python, zygote.exit_code)
                self._broken.add(python)
            else:
                log.warning("the zygote of %s exited; starting another", python)
            del self._zygotes[python]
            zygote = None
        if zygote is None:
            if python not in self._broken:
                await self._start(python)
            return None
        if not zygote.ready:
            return None
        differs = startup_differs(env, zygote.env)
        if differs:
            log.info("a runner of %s starts without the zygote: %s differ from the zygote's",
                     python, ", ".join(differs))
            return None
        return zygote

    async def _start(self, python: str) -> None:
        zygote = Zygote(python, self._env)
        try:
            await zygote.open()
        except Exception:
            log.exception("starting the zygote of %s failed; runners of it start without one",
                          python)
            self._broken.add(python)
            return
        self._zygotes[python] = zygote

    async def close(self) -> None:
        """Stops every zygote; none starts from now on. Idempotent."""
        self._closed = True
        zygotes, self._zygotes = list(self._zygotes.values()), {}
        await asyncio.gather(*(zygote.close() for zygote in zygotes))
