"""Starting subprocesses from the server without fork handlers.

uvloop starts subprocesses with fork(), which runs gRPC's pthread_atfork handlers in the
child; with gRPC threads busy, the child dies of SIGSEGV before exec now and then (measured:
26 of 400 starts while RPCs were in flight). `subprocess.Popen` starts children with
vfork()/exec, which runs no fork handlers (0 of 400). So every child of the server is started
here with Popen (in a worker thread: it blocks until exec), and its exit is awaited on the
event loop through a pidfd, without polling and without a blocking wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any


class Child:
    """A started subprocess. Loop-affine: create it and await it on one event loop."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exit_code(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    @property
    def stdout(self) -> IO[bytes] | None:
        return self._popen.stdout

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), once the child has exited."""
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        """Signals the child (or its process group). Does nothing once it has exited."""
        if self._exited.done():
            return
        try:
            if group:
                os.killpg(self._popen.pid, sig)
            else:
                self._popen.send_signal(sig)
        except ProcessLookupError:
            return

    def _on_exit(self) -> None:
        code = self._popen.poll()  # reaps the child; the pidfd is readable once it exited
        if code is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(code)


async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    new_session: bool = False,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Starts `argv` (stdin from /dev/null; of this process's other file descriptors only
    `pass_fds`) and returns once it has been exec'd."""
    popen = await asyncio.to_thread(
        subprocess.Popen, list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=stdout, stderr=stderr, start_new_session=new_session, pass_fds=pass_fds,
    )
    return Child(popen)


async def run_streaming(argv: Sequence[str], on_line: Callable[[str], Awaitable[None]]) -> int:
    """Runs a command to its end, passing each line of its output to `on_line`."""
    read_end, write_end = os.pipe()
    try:
        child = await spawn(argv, stdout=write_end, stderr=subprocess.STDOUT)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    rest = b""
    async for data in read_pipe(read_end):
        *lines, rest = (rest + data).split(b"\n")
        for raw in lines:
            await on_line(raw.decode(errors="replace").rstrip())
    if rest:
        await on_line(rest.decode(errors="replace").rstrip())
    return await child.wait()


async def read_pipe(fd: int, chunk_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The bytes of the pipe `fd` as they come, until every writer has closed it; then
    closes `fd`, once. (Not `loop.connect_read_pipe`: uvloop's pipe transport closes the
    descriptor through libuv and then its file object closes the same number again, which
    by then may be another thread's new descriptor: a `subprocess.run` in a worker thread
    failed with EBADF that way.)"""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                data = os.read(fd, chunk_bytes)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not data:
                return
            yield data
    finally:
        loop.remove_reader(fd)
        os.close(fd)
