"""The RunnerLink service's Attach over a stream link (falrt/streamlink.py): a listener on
a Unix socket (or a loopback address) whose connections each run the very
`RunnerLinkService.Attach` a gRPC stream runs, fed the frames' messages and writing what it
yields as frames. Hello, its token check, Welcome, heartbeats, batching and the fail-over of
a runner's work when its connection ends are the service's own, unchanged.

Which runners use it (`--runner-link`, `link_is_stream`): by default ("auto") those of the
process backend, which run on the server's own host; docker and ray runners dial the gRPC
RunnerLink service (TLS-capable, reachable from other hosts and from containers). The link
carries no TLS, so it listens only where no other host can reach it: by default a Unix
socket in a folder of the data dir only the server's user may enter (0700; the socket
itself 0600), so that file permissions, and the runner's token in Hello, guard it. The gRPC
RunnerLink service stays up beside it (FetchBundle, and the runners that use gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import NoReturn, Protocol

import grpc

from falrt.server.api.runner_link import LinkContext, RunnerLinkService
from falrt.settings import ServerSettings
from falrt.streamlink import PREFIX, FrameConnection, LinkEnded
from falrt.v1 import runner_pb2

log = logging.getLogger(__name__)
Connection = FrameConnection[runner_pb2.RunnerMessage]
LINK_FOLDER = "link"  # <data_dir>/link/runner.sock: the stream link's default socket
SOCKET_NAME = "runner.sock"
TEMPORARY_PREFIX = "falrt-link-"  # (tempfile.mkdtemp adds 8 characters)
# A Unix socket's address holds at most 107 bytes of path on Linux (sun_path, with its NUL)
# and 103 on macOS: a longer default path moves to a new folder of the temporary one.
MAX_SOCKET_PATH = 100


class Attachable(Protocol):
    """What the stream link serves: RunnerLinkService, or any servicer of Attach."""

    def Attach(
        self, request_iterator: AsyncIterator[runner_pb2.RunnerMessage], context: LinkContext
    ) -> AsyncGenerator[runner_pb2.ServerMessage, None]: ...


class _Context:
    """What Attach needs of gRPC's servicer context: `abort` ends the stream with a status."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise LinkEnded(code, details)


def link_is_stream(runner_link: str, backend: str) -> bool:
    """Whether runners of `backend` dial the stream link under `--runner-link runner_link`:
    "auto", the process backend's (on the server's host) and no others; "grpc", none;
    "stream", the process backend's. Raises ValueError for "stream" with another backend,
    or a value it does not know."""
    match runner_link:
        case "auto":
            return backend == "process"
        case "grpc":
            return False
        case "stream" if backend == "process":
            return True
        case "stream":
            raise ValueError(f"the stream link serves the process backend's runners only, "
                             f"not {backend}'s (use auto or grpc)")
        case other:
            raise ValueError(f"unknown runner link {other!r}: choose auto, grpc or stream")


async def open_link(settings: ServerSettings, service: RunnerLinkService) -> StreamLink:
    """The stream link: listening where the settings make runners dial it (`link_is_stream`),
    else idle (no `address`; `close` does nothing). Raises ValueError, naming the option,
    for a setting it cannot serve or an address it cannot listen on."""
    link = StreamLink(service, settings.max_message_bytes)
    try:
        if link_is_stream(settings.runner_link, settings.backend):
            listen, temporary = settings.runner_link_listen, None
            if not listen:
                path, temporary = await asyncio.to_thread(private_socket, settings.data_dir)
                listen = f"unix:{path}"
            await link.start(listen, temporary)
    except (ValueError, OSError) as exc:
        raise ValueError(f"--runner-link {settings.runner_link}: {exc}") from None
    if link.address:
        log.info("runners dial the stream link at %s", link.address)
    return link


def private_socket(data_dir: Path) -> tuple[Path, Path | None]:
    """Where the stream link listens by default, and the temporary folder made for it
    (None: none): runner.sock in `data_dir`/link, a folder only this user may enter (made,
    or set, 0700); where that path is too long for a Unix socket's address, in a new 0700
    folder of the temporary one (or of /tmp, where that is too deep too; the link removes it
    when it closes). Blocking. Raises ValueError when no such path is short enough."""
    folder = data_dir.absolute() / LINK_FOLDER
    if _fits(folder):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # (one made by an older server, or under another umask)
        return folder / SOCKET_NAME, None
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):
        if _fits(base / f"{TEMPORARY_PREFIX}12345678") and base.is_dir():
            temporary = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=base))
            return temporary / SOCKET_NAME, temporary
    raise ValueError(f"{folder / SOCKET_NAME} is too long for a Unix socket's address, and "
                     "so is the temporary folder's: choose one with --runner-link-listen")


def _fits(folder: Path) -> bool:
    return len(os.fsencode(folder / SOCKET_NAME)) <= MAX_SOCKET_PATH


class StreamLink:
    """The stream listener and one task per connected runner; `close` ends them all."""

    def __init__(self, service: Attachable, max_message_bytes: int) -> None:
        self._service = service
        self._max = max_message_bytes
        self._server: asyncio.Server | None = None
        self._socket: Path | None = None  # the Unix socket's file, while it listens on one
        self._temporary: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""  # what runners dial (FALRT_SERVER), once started

    async def start(self, listen: str, temporary: Path | None = None) -> None:
        """Listens on `listen` (HOST:PORT on loopback, or unix:PATH: a socket only this user
        may connect to, 0600) and sets `address`; `temporary`, a folder `close` removes.
        Raises ValueError for an address other hosts could reach, OSError when it cannot
        listen (a Unix socket another process listens on included)."""
        loop = asyncio.get_running_loop()
        self._temporary = temporary
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix:"))
            await asyncio.to_thread(_check_unused, path)
            self._server = await loop.create_unix_server(self._accept, str(path))
            await asyncio.to_thread(path.chmod, 0o600)
            self._socket, self.address = path, f"{PREFIX}unix:{path}"
            return
        host, _, port = listen.rpartition(":")
        if not ipaddress.ip_address(host.strip("[]") or "0.0.0.0").is_loopback:
            raise ValueError(f"--runner-link-listen {listen}: the stream link has no TLS, so "
                             "it listens on a loopback address or a Unix socket only")
        self._server = await loop.create_server(self._accept, host.strip("[]"), int(port))
        bound = self._server.sockets[0].getsockname()
        self.address = f"{PREFIX}{host}:{bound[1]}"

    async def close(self) -> None:
        """Stops listening, removes its socket file (and temporary folder), and ends every
        runner's connection (their work fails over). Idempotent."""
        if self._server is not None:
            self._server.close()
        if self._socket is not None:
            await asyncio.to_thread(_remove, self._socket, self._temporary)
            self._socket = self._temporary = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self) -> Connection:
        return FrameConnection(runner_pb2.RunnerMessage.FromString, self._max, strict=False,
                               on_made=self._connected)

    def _connected(self, connection: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, connection: Connection) -> None:
        """Runs Attach on `connection`; its end (refused, finished, failed) becomes STATUS."""
        code, details = grpc.StatusCode.OK, ""
        try:
            replies = self._service.Attach(connection, _Context())
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    await connection.write(reply)
        except LinkEnded as exc:
            code, details = exc.code, exc.details
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.UNAVAILABLE, "the server is stopping"
            raise
        except ConnectionError:
            pass  # the runner is gone: Attach has detached it
        except Exception:
            log.exception("a runner's stream link failed")
            code, details = grpc.StatusCode.INTERNAL, "the server failed"
        finally:
            connection.end(code, details)


def _check_unused(path: Path) -> None:
    """Raises OSError when a process listens on the Unix socket at `path` (another server
    of this data dir); a socket file left by one that ended is replaced. Blocking."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return  # (none there, or nobody listens)
    raise OSError(f"another process listens on {path}")


def _remove(path: Path, temporary: Path | None) -> None:
    """Removes the socket file at `path` and the `temporary` folder. Blocking."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
