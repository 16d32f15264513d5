"""A raw HTTP/1.1 client for load: keep-alive connections on asyncio streams, no parsing
beyond what a benchmark needs (status, Content-Length or chunked bodies).

It costs the client process far less per call than httpx, so that on a small machine the
figures show the server, not the client. Each call takes an idle connection from the pool
(or opens one), so `concurrency` workers use at most `concurrency` connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from loadgen import CallFailed


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; the last of repeated ones
    body: bytes


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpClient:
    """Keep-alive connections to 127.0.0.1:`port`; `headers` go with every request."""

    def __init__(self, port: int, headers: Mapping[str, str] | None = None) -> None:
        self._port = port
        self._common = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: list[Connection] = []
        self._all: list[asyncio.StreamWriter] = []

    def encode(self, method: str, path: str, body: bytes = b"",
               headers: Mapping[str, str] | None = None) -> bytes:
        """The bytes of one request (build it once, send it many times)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" \
            if method in ("POST", "PUT") else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n{self._common}" \
            f"{extra}{length}\r\n"
        return head.encode() + body

    async def send(self, request: bytes) -> Response:
        """Sends `request` (from `encode`) and reads the whole response."""
        reader, writer = await self._take()
        writer.write(request)
        response, reusable = await _read_response(reader)
        if reusable:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return response

    async def _take(self) -> Connection:
        if self._idle:
            return self._idle.pop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._all.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()


def ok(response: Response, what: str) -> Response:
    """`response` if its status is 2xx; else CallFailed naming `what`."""
    if not 200 <= response.status < 300:
        raise CallFailed(f"{what}: HTTP {response.status} {response.body[:200]!r}")
    return response


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    reusable = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:  # delimited by the end of the connection
        body, reusable = await reader.read(), False
    return Response(status, headers, body), reusable


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers: the blank line that ends it
            return b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])
