"""A batched test endpoint: it reports the size and number of the batch each item was in."""

from __future__ import annotations

import threading

import msgspec

import falrt


class Item(msgspec.Struct):
    x: int
    fail: bool = False


class Doubled(msgspec.Struct):
    doubled: int
    batch_size: int
    batch: int


class Batcher(falrt.App):
    app_name = "batcher"
    max_multiplexing = 16
    max_concurrency = 1
    keep_alive = 300

    def setup(self) -> None:
        self.batches = 0
        self.lock = threading.Lock()

    @falrt.endpoint("/", max_batch_size=8, max_batch_wait_ms=100)
    def double(self, items: list[Item]) -> list[Doubled]:
        with self.lock:
            self.batches += 1
            batch = self.batches
        return [ValueError(f"item {i.x} is refused") if i.fail  # type: ignore[misc]
                else Doubled(i.x * 2, len(items), batch) for i in items]
