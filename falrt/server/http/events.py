"""Server-sent events (`text/event-stream`), and noticing that a caller went away.

`EventStream` is the ASGI answer of every SSE route: the status stream of a queued request
and the outputs of a streaming endpoint. It sends each event as it comes, with no polling
and no buffering, and when the caller goes away it stops the events' source and says so
(`on_gone`: a direct call is abandoned, as on the gRPC edge).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.types import Receive, Scope, Send

from falrt import errors
from falrt.server.http.errors import error_body, error_response

HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]


def event(data: bytes, name: str = "") -> bytes:
    """One SSE event carrying `data` (a JSON document): `data: …` then a blank line. A
    newline in `data` (only ever whitespace in JSON) starts another `data:` line, which
    SSE readers join back with a newline."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + data + b"\n\n"


async def disconnected(receive: Receive) -> None:
    """Returns once the caller has gone away (the body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """An answer of server-sent events from `events`, each already made by `event()`.

    Nothing is sent before the first event: a FalrtError `events` raises before it is
    answered as a plain error (its status, envelope and X-Fal-Error-Type); one raised
    later ends the stream with an `error` event carrying the envelope. When the caller goes
    away, `events` is closed and `on_gone` runs once. Cancelling the answer (the server
    stops) counts as the caller going away.
    """

    def __init__(
        self, events: AsyncIterator[bytes], headers: dict[str, str],
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        self._events = events
        self._headers = [*HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())]
        self._on_gone = on_gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(scope, receive, send))
        gone = loop.create_task(disconnected(receive))
        try:
            await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._stop(pump)
            raise
        finally:
            gone.cancel()
        if pump.done():
            pump.result()  # (an unexpected error is the server's 500, logged by uvicorn)
        else:
            await self._stop(pump)

    async def _stop(self, pump: asyncio.Task[None]) -> None:
        """The caller went away (or the server stops): the events end, `on_gone` runs."""
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self._on_gone is not None:
            self._on_gone()

    async def _pump(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            async for data in self._events:
                if not started:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": self._headers})
                    started = True
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except errors.FalrtError as exc:
            if not started:
                await error_response(exc)(scope, receive, send)
                return
            await send({"type": "http.response.body", "body": event(error_body(exc), "error"),
                        "more_body": True})
        finally:
            await _close(self._events)
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _close(events: AsyncIterator[bytes]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
