"""A test app for the ray backend: machine type S, up to 4 runners of one slot each.

`/` answers with the runner that served it after `sleep_s`, having written its runner id
to the file `started` first (a test kills the runner's node meanwhile); `/stream` yields
`count` parts; `/wait` waits until it is cancelled.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

import falrt

VERSION = "1"  # a rolling-deploy test deploys a copy with another


class Input(msgspec.Struct):
    sleep_s: float = 0.0
    started: str = ""  # a file created when the handler starts


class Output(msgspec.Struct):
    runner: str
    version: str
    bundle_dir: str
    cuda_visible_devices: str


class Count(msgspec.Struct):
    count: int = 3


class Part(msgspec.Struct):
    index: int


class Placed(falrt.App):
    app_name = "placed"
    machine_type = "S"
    max_multiplexing = 1
    max_concurrency = 4
    keep_alive = 300

    @falrt.endpoint("/")
    async def where(self, request: Input) -> Output:
        if request.started:
            Path(request.started).write_text(os.environ["FALRT_RUNNER_ID"])
        await asyncio.sleep(request.sleep_s)
        return Output(runner=os.environ["FALRT_RUNNER_ID"], version=VERSION, bundle_dir=os.getcwd(),
                      cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

    @falrt.endpoint("/stream")
    async def parts(self, request: Count) -> AsyncIterator[Part]:
        for index in range(request.count):
            await asyncio.sleep(0.05)
            yield Part(index=index)

    @falrt.endpoint("/wait")
    async def wait(self, request: Count) -> Part:
        await asyncio.Event().wait()  # only a cancel ends this
        return Part(index=-1)
