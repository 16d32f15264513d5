"""A no-op echo app, used by bench/overhead.py to measure what falrt adds to a call.

The handler is async and does nothing, so the measured time is the runtime's own.
"""

from __future__ import annotations

import msgspec

import falrt


class Payload(msgspec.Struct):
    value: int = 0


class Noop(falrt.App):
    app_name = "noop"
    max_multiplexing = 32
    max_concurrency = 1
    keep_alive = 600

    @falrt.endpoint("/")
    async def echo(self, request: Payload) -> Payload:
        return request
