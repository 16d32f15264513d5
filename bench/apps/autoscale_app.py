"""The app bench/autoscale.py replays its traffic trace against.

Each request sleeps `sleep_s` seconds (asyncio, so one runner serves `max_multiplexing`
requests at once), then answers which runner served it. The scale settings are small so that
a trace shows the whole picture in about a minute: at most 4 runners of 2 requests each, and
an idle runner goes after 5 s.
"""

from __future__ import annotations

import asyncio
import os

import msgspec

import falrt


class Input(msgspec.Struct):
    sleep_s: float = 0.5


class Output(msgspec.Struct):
    runner: str


class AutoscaleApp(falrt.App):
    app_name = "autoscale"
    max_multiplexing = 2
    max_concurrency = 4
    keep_alive = 5

    @falrt.endpoint("/")
    async def work(self, request: Input) -> Output:
        await asyncio.sleep(request.sleep_s)
        return Output(runner=os.environ.get("FALRT_RUNNER_ID", ""))
