"""A test app for scaling across servers: at most 4 runners, one request each, a handler
that takes as long as it is asked to, and the runner's id in the output."""

from __future__ import annotations

import os
import time

import msgspec

import falrt


class Input(msgspec.Struct):
    text: str
    seconds: float = 0.0


class Output(msgspec.Struct):
    text: str
    runner: str


class Capped(falrt.App):
    app_name = "capped"
    max_concurrency = 4
    max_multiplexing = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        time.sleep(request.seconds)
        return Output(text=request.text, runner=os.environ["FALRT_RUNNER_ID"])
