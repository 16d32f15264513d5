"""A test app whose requests can be held on a FIFO until the test releases them."""

from __future__ import annotations

import os

import msgspec

import falrt


class Input(msgspec.Struct):
    text: str
    gate: str = ""  # path of a FIFO to read one byte from before answering
    fail: bool = False


class Output(msgspec.Struct):
    text: str
    runner: str


class Gated(falrt.App):
    app_name = "gated"
    max_multiplexing = 1
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        print(f"working on {request.text}")
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        if request.fail:
            raise RuntimeError(f"failing on purpose for {request.text}")
        return Output(text=request.text, runner=os.environ["FALRT_RUNNER_ID"])
