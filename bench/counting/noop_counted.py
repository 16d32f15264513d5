"""examples/noop.py with bench/counting/counters.py on in its runner (when BENCH_COUNTERS,
which the runner inherits from its server, names a folder): bench/breakdown.py's counts."""

from __future__ import annotations

import os

import counters
import msgspec

import falrt

if os.environ.get("BENCH_COUNTERS"):
    counters.install(os.environ["BENCH_COUNTERS"], "runner")


class Payload(msgspec.Struct):
    value: int = 0


class NoopCounted(falrt.App):
    app_name = "noop-counted"
    max_multiplexing = 32
    max_concurrency = 1
    keep_alive = 600

    @falrt.endpoint("/")
    async def echo(self, request: Payload) -> Payload:
        return request
