"""A test app for runner lifecycles: async requests that sleep or wait on a FIFO gate, and
report their runner, its pid and the most requests it ran at once."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec

import falrt


class Input(msgspec.Struct):
    seconds: float = 0.0
    gate: str = ""  # a FIFO to read one byte from before answering
    pid_file: str = ""  # where to write the runner's pid when the request starts
    hang_teardown: bool = False  # this runner's teardown() will never end


class Output(msgspec.Struct):
    runner: str
    pid: int
    peak: int  # the most requests this runner has run at once, so far


def _read_gate(path: str) -> None:
    with open(path, "rb") as gate:
        gate.read(1)


class Lifecycle(falrt.App):
    app_name = "lifecycle"
    max_multiplexing = 2
    max_concurrency = 4
    keep_alive = 2

    def setup(self) -> None:
        self.active = 0
        self.peak = 0
        self.hang_teardown = False
        print("lifecycle setup done", flush=True)

    def handle_exit(self) -> None:
        print(f"handle_exit with {self.active} in flight", flush=True)

    def teardown(self) -> None:
        print("teardown started", flush=True)
        if self.hang_teardown:
            time.sleep(3600)
        print("teardown done", flush=True)

    @falrt.endpoint("/")
    async def work(self, request: Input) -> Output:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.hang_teardown = self.hang_teardown or request.hang_teardown
        try:
            if request.pid_file:
                Path(request.pid_file).write_text(str(os.getpid()))
            if request.gate:
                await asyncio.to_thread(_read_gate, request.gate)
            await asyncio.sleep(request.seconds)
        finally:
            self.active -= 1
        return Output(runner=os.environ["FALRT_RUNNER_ID"], pid=os.getpid(), peak=self.peak)
