"""A test app for several servers: one side effect per execution (a file named after the
request's key, its runner and a fresh id), and the runner's id in the output."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import msgspec

import falrt


class Input(msgspec.Struct):
    key: str
    n: int
    marks: str
    seconds: float = 0.1


class Output(msgspec.Struct):
    key: str
    double: int
    runner: str


class Tally(falrt.App):
    app_name = "tally"
    max_multiplexing = 4
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        time.sleep(request.seconds)
        runner = os.environ["FALRT_RUNNER_ID"]
        (Path(request.marks) / f"{request.key}.{runner}.{uuid.uuid4().hex}").touch()
        return Output(key=request.key, double=request.n * 2, runner=runner)
