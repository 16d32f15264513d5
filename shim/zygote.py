"""A warm template of runners ("zygote"): `python -m falrt.shim.zygote`, one per interpreter.

Starting a runner costs an interpreter start and the imports of the shim (grpc, protobuf,
uvloop, msgspec, falrt.sdk): about 0.15 s of CPU before the app's own code runs. A zygote
pays that once: it imports the shim, then forks a runner whenever the server asks, and the
child goes straight to `falrt.shim.main.main()` with that runner's settings.

The server (`falrt.backends.zygote`) starts it with one end of a SOCK_SEQPACKET socket pair
as file descriptor FALRT_ZYGOTE_FD. Each datagram is one JSON message of the closed union
below; file descriptors travel beside it (SCM_RIGHTS):

    zygote -> server  Ready    once, after the imports: forks may be asked for
    server -> zygote  Fork     a runner: its environment, working directory; fd: its log
    zygote -> server  Forked   the child's pid; fd: a pidfd of it (for signals)
    zygote -> server  Failed   the fork failed (the server starts the runner without it)
    zygote -> server  Exited   a child exited, with its status (negative: killed by that
                               signal), as `subprocess.Popen.returncode` says it

Rules that keep fork safe (gRPC's among them): the zygote creates no gRPC channel or server
(importing grpc initialises nothing, and fork support stays off), runs no thread and no
event loop (one blocking `selectors` loop in the main thread; before each fork it checks
that it has one thread, and answers Failed otherwise), and never touches a GPU (its
CUDA_VISIBLE_DEVICES is empty). The child applies the runner's settings before anything
reads them: a new session, its log on stdout and stderr, stdin from /dev/null, its
environment (secrets included: the zygote's own never changes), its working directory.

Every child dies with the zygote (FALRT_PARENT_PID is the zygote's pid), and the zygote with
the server (its own FALRT_PARENT_PID): no runner outlives its server. The zygote exits when
the server closes the socket. It never logs a Fork message: it carries the app's secrets.
"""

from __future__ import annotations

import gc
import os
import selectors
import socket
import sys
import time
import traceback
from collections.abc import Mapping

import msgspec

from .parent import die_with_parent

__all__ = ["Exited", "Failed", "Fork", "Forked", "Ready", "ZygoteMessage", "decode", "encode"]

FD_VARIABLE = "FALRT_ZYGOTE_FD"
MAX_MESSAGE_BYTES = 1024 * 1024
EXIT_CHILD_FAILED = 1  # the child could not become a runner (its log says why)


class Ready(msgspec.Struct, tag=True, frozen=True):
    pid: int


class Fork(msgspec.Struct, tag=True, frozen=True):
    """One runner to fork. `env` is its whole environment (secrets included: never logged)."""

    fork_id: int
    env: dict[str, str]
    cwd: str

    def __repr__(self) -> str:  # never the environment
        return f"Fork(fork_id={self.fork_id}, cwd={self.cwd!r})"


class Forked(msgspec.Struct, tag=True, frozen=True):
    fork_id: int
    pid: int


class Failed(msgspec.Struct, tag=True, frozen=True):
    fork_id: int
    error: str


class Exited(msgspec.Struct, tag=True, frozen=True):
    pid: int
    code: int


ZygoteMessage = Ready | Fork | Forked | Failed | Exited
_decoder = msgspec.json.Decoder(ZygoteMessage)


def encode(message: ZygoteMessage) -> bytes:
    return msgspec.json.encode(message)


def decode(data: bytes) -> ZygoteMessage:
    """Raises msgspec.ValidationError (or DecodeError) for anything but one message."""
    return _decoder.decode(data)


class Zygote:
    """The zygote's loop: forks runners on request and reports their exits. Single-threaded."""

    def __init__(self, sock: socket.socket, inherited: dict[str, str]) -> None:
        self._sock = sock
        # Variables the imports set in the zygote's environment (grpc sets one): the
        # children keep them, as a runner that imported the shim itself would have them.
        self._inherited = inherited
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, int] = {}  # pidfd -> pid
        self._pid = os.getpid()

    def run(self) -> int:
        """Serves until the server closes the socket; returns the exit status."""
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._send(Ready(os.getpid()))
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._sock:
                    if not self._on_request():
                        return 0
                else:
                    self._reap(int(key.fd))

    def _on_request(self) -> bool:
        """Handles one message of the server; False once the server has gone."""
        data, fds, _, _ = socket.recv_fds(self._sock, MAX_MESSAGE_BYTES, 1)
        if not data:
            return False
        try:
            request = decode(data)
            if not isinstance(request, Fork) or len(fds) != 1:
                raise ValueError("expected a Fork with one file descriptor")
            self._fork(request, fds[0])
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _fork(self, request: Fork, log_fd: int) -> None:
        if len(os.listdir("/proc/self/task")) > 1:  # (native ones too): fork is unsafe
            self._send(Failed(request.fork_id, "the zygote runs threads; not forking"))
            return
        try:
            pid = os.fork()
        except OSError as exc:
            self._send(Failed(request.fork_id, f"fork failed: {exc}"))
            return
        if pid == 0:
            os._exit(self._become_runner(request, log_fd))
        pidfd = os.pidfd_open(pid)
        self._children[pidfd] = pid
        self._selector.register(pidfd, selectors.EVENT_READ)
        socket.send_fds(self._sock, [encode(Forked(request.fork_id, pid))], [pidfd])

    def _become_runner(self, request: Fork, log_fd: int) -> int:
        """In the child: leaves the zygote's resources, takes the runner's settings, runs
        the shim. Returns the exit status (never returns into the zygote's loop)."""
        try:
            os.setsid()  # its own process group: stopping it stops what the app spawned
            self._selector.close()
            self._sock.close()
            for pidfd in self._children:
                os.close(pidfd)
            _redirect(log_fd)
            # It dies with the zygote, which dies with the server.
            _apply_env(self._inherited | request.env | {"FALRT_PARENT_PID": str(self._pid)})
            os.chdir(request.cwd)
            sys.path[0] = request.cwd  # as `python -m falrt.shim` started in it would have
            sys.argv = [sys.argv[0]]
            from .main import main

            code = main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_CHILD_FAILED
        except BaseException:
            traceback.print_exc()
            code = EXIT_CHILD_FAILED
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        return code

    def _reap(self, pidfd: int) -> None:
        pid = self._children.pop(pidfd)
        self._selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self._send(Exited(pid, os.waitstatus_to_exitcode(status)))

    def _send(self, message: ZygoteMessage) -> None:
        self._sock.sendall(encode(message))


def _redirect(log_fd: int) -> None:
    """The runner's log on fds 1 and 2 (where `sys.stdout` and `sys.stderr` write), and
    /dev/null on fd 0, as the process backend's plain start gives them."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def _apply_env(env: dict[str, str]) -> None:
    """Makes `env` the whole environment (os.environ and the C library's), and lets the
    time functions see its TZ."""
    os.environ.clear()
    os.environ.update(env)
    time.tzset()


def preload() -> None:
    """Imports what every runner imports before the app's code: the shim and its
    dependencies (grpc, protobuf, uvloop, msgspec, falrt.sdk). Creates no channel, thread
    or event loop."""
    from . import main  # noqa: F401


def serve(environ: Mapping[str, str] = os.environ) -> int:
    """The zygote's entry point. Exit status 2 when it was not started by a server."""
    raw = environ.get(FD_VARIABLE, "")
    if not raw.isdigit():
        print(f"falrt.shim.zygote: {FD_VARIABLE} is not set", file=sys.stderr)
        return 2
    before = dict(environ)
    die_with_parent(int(environ["FALRT_PARENT_PID"]) if "FALRT_PARENT_PID" in environ else None)
    preload()
    gc.freeze()  # what the imports made stays shared with the children (no GC writes to it)
    inherited = {key: value for key, value in environ.items() if key not in before}
    sock = socket.socket(fileno=int(raw))
    sock.setblocking(True)
    return Zygote(sock, inherited).run()


if __name__ == "__main__":
    raise SystemExit(serve())
