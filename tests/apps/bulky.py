"""A test app whose outputs are as large as asked: for full disks and size limits. Each
execution leaves one file in `marks` (named after the request's key and a fresh id)."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

import falrt


class Input(msgspec.Struct):
    key: str
    size: int = 0  # characters of output
    marks: str = ""
    gate: str = ""  # path of a FIFO to read one byte from before answering


class Output(msgspec.Struct):
    key: str
    data: str


class Bulky(falrt.App):
    app_name = "bulky"
    max_multiplexing = 4
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        if request.marks:
            (Path(request.marks) / f"{request.key}.{uuid.uuid4().hex}").touch()
        return Output(key=request.key, data="x" * request.size)
