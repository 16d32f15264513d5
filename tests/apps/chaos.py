"""The chaos test's app: most requests are small; some answer more than a message may carry,
some print an endless line. Each execution leaves one file in `marks`, named after the
request's key, its runner's pid and a fresh id (so every execution and runner is counted)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import msgspec

import falrt

OVERSIZED = 70 * 1024 * 1024  # over the 64 MiB a message may carry


class Input(msgspec.Struct):
    key: str
    n: int
    marks: str
    kind: str = "small"  # small, huge_output, huge_line


class Output(msgspec.Struct):
    key: str
    double: int
    data: str = ""


class Chaos(falrt.App):
    app_name = "chaos"
    max_multiplexing = 8
    max_concurrency = 2
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        time.sleep(0.05)
        mark = Path(request.marks) / f"{request.key}.{os.getpid()}.{uuid.uuid4().hex}"
        mark.touch()
        if request.kind == "huge_line":
            sys.stdout.write("y" * OVERSIZED)
            sys.stdout.write("\n")
        data = "x" * OVERSIZED if request.kind == "huge_output" else ""
        return Output(key=request.key, double=request.n * 2, data=data)
