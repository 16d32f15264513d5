"""A realtime test app: each line in, its upper-case reply out, on one runner."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import msgspec

import falrt


class Line(msgspec.Struct):
    text: str
    fail: bool = False
    pause_s: float = 0.0  # the handler reads slowly


class Reply(msgspec.Struct):
    text: str
    n: int
    runner: str


class Chat(falrt.App):
    app_name = "chat"
    max_multiplexing = 2
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/chat", realtime=True)
    async def chat(self, lines: AsyncIterator[Line]) -> AsyncIterator[Reply]:
        n = 0
        async for line in lines:
            if line.pause_s:
                await asyncio.sleep(line.pause_s)
            if line.fail:
                raise RuntimeError(f"cannot answer {line.text!r}")
            n += 1
            yield Reply(text=line.text.upper(), n=n, runner=os.environ["FALRT_RUNNER_ID"])

    @falrt.endpoint("/")
    def ping(self, line: Line) -> Reply:
        return Reply(text=line.text, n=0, runner=os.environ["FALRT_RUNNER_ID"])
