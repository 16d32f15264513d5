"""The RunnerLink service's Attach over a stream link (`--runner-link stream`,
falrt/streamlink.py): a listener on a loopback address or a Unix socket whose connections
each run the very `RunnerLinkService.Attach` a gRPC stream runs, fed the frames' messages
and writing what it yields as frames. Hello, its token check, Welcome, heartbeats,
batching and the fail-over of a runner's work when its connection ends are the service's
own, unchanged.

The link carries no TLS, so it listens only where no other host can reach it. The gRPC
RunnerLink service stays up beside it (FetchBundle).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NoReturn, Protocol

import grpc

from falrt.server.api.runner_link import LinkContext, RunnerLinkService
from falrt.settings import ServerSettings
from falrt.streamlink import PREFIX, FrameConnection, LinkEnded
from falrt.v1 import runner_pb2

log = logging.getLogger(__name__)
Connection = FrameConnection[runner_pb2.RunnerMessage]


class Attachable(Protocol):
    """What the stream link serves: RunnerLinkService, or any servicer of Attach."""

    def Attach(
        self, request_iterator: AsyncIterator[runner_pb2.RunnerMessage], context: LinkContext
    ) -> AsyncGenerator[runner_pb2.ServerMessage, None]: ...


class _Context:
    """What Attach needs of gRPC's servicer context: `abort` ends the stream with a status."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise LinkEnded(code, details)


async def open_link(settings: ServerSettings, service: RunnerLinkService) -> StreamLink:
    """The stream link: listening with `--runner-link stream`, else idle (no `address`;
    `close` does nothing). Raises ValueError, naming the option, for a setting it cannot
    serve or an address it cannot listen on."""
    link = StreamLink(service, settings.max_message_bytes)
    if settings.runner_link == "stream":
        if settings.backend != "process":
            raise ValueError("--runner-link stream: the stream link (a prototype) serves the "
                             "process backend only")
        try:
            await link.start(settings.runner_link_listen)
        except (ValueError, OSError) as exc:
            raise ValueError(f"--runner-link stream: {exc}") from None
    return link


class StreamLink:
    """The stream listener and one task per connected runner; `close` ends them all."""

    def __init__(self, service: Attachable, max_message_bytes: int) -> None:
        self._service = service
        self._max = max_message_bytes
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""  # what runners dial (FALRT_SERVER), once started

    async def start(self, listen: str) -> None:
        """Listens on `listen` (HOST:PORT on loopback, or unix:PATH) and sets `address`.
        Raises ValueError for an address other hosts could reach, OSError when it cannot
        listen."""
        loop = asyncio.get_running_loop()
        if listen.startswith("unix:"):
            path = listen.removeprefix("unix:")
            self._server = await loop.create_unix_server(self._accept, path)
            self.address = f"{PREFIX}unix:{path}"
            return
        host, _, port = listen.rpartition(":")
        if not ipaddress.ip_address(host.strip("[]") or "0.0.0.0").is_loopback:
            raise ValueError(f"--runner-link-listen {listen}: the stream link has no TLS, so "
                             "it listens on a loopback address or a Unix socket only")
        self._server = await loop.create_server(self._accept, host.strip("[]"), int(port))
        bound = self._server.sockets[0].getsockname()
        self.address = f"{PREFIX}{host}:{bound[1]}"

    async def close(self) -> None:
        """Stops listening and ends every runner's connection (their work fails over)."""
        if self._server is not None:
            self._server.close()
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
