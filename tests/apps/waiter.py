"""A test app whose handlers wait until they are cancelled (or a FIFO gate opens)."""

from __future__ import annotations

import asyncio
import os

import msgspec

import falrt


class Input(msgspec.Struct):
    text: str
    wait: bool = False
    gate: str = ""


class Output(msgspec.Struct):
    text: str
    runner: str


class Waiter(falrt.App):
    app_name = "waiter"
    max_multiplexing = 4
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/async")
    async def wait_async(self, request: Input) -> Output:
        if request.wait:
            await asyncio.Event().wait()  # only a cancel ends this
        return Output(text=request.text, runner=os.environ["FALRT_RUNNER_ID"])

    @falrt.endpoint("/sync")
    def wait_sync(self, request: Input) -> Output:
        context = self.current_request
        assert context is not None
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        if request.wait:
            context.wait_cancelled()  # a sync handler blocks until the server cancels it
        if context.cancelled:
            print("stopping early: cancelled")
            raise falrt.RequestCancelledError("stopped on request")
        return Output(text=request.text, runner=os.environ["FALRT_RUNNER_ID"])
