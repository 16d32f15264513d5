"""A slow test app that leaves one side effect per execution: a file named after the
request's key, its runner's pid and a fresh id (so every execution is counted)."""

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
    sleep_s: float = 0.05  # how long the handler works


class Output(msgspec.Struct):
    key: str
    double: int


class Ledger(falrt.App):
    app_name = "ledger"
    max_multiplexing = 8
    max_concurrency = 2
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        time.sleep(request.sleep_s)
        mark = Path(request.marks) / f"{request.key}.{os.getpid()}.{uuid.uuid4().hex}"
        mark.touch()
        return Output(key=request.key, double=request.n * 2)
