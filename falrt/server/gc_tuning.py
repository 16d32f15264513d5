"""The server process's garbage collector: young collections ten times rarer than Python's
default.

CPython collects its youngest generation after every 700 allocations of tracked objects,
and each collection promotes whatever is alive to the next generation: in a busy server
that is the objects of every call in flight (gRPC's, its coroutines, futures, messages),
which then count towards the next full collection, whose cost is every live object, the
queue's waiting requests included. Under durable submits at concurrency 64, with the queue
growing, the collector was 23% of the server's busy samples (py-spy); with 10,000 it was
3%, and in interleaved runs the submits' p99 fell from 220-255 ms to 90-115 ms, their CPU
per call changing within the noise (bench/RESULTS.md, "the durable queue path"). A young
collection costs about the number of objects still alive in it, not the number allocated, so
rarer ones do less work in all; cyclic garbage lives a little longer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

# Allocations between young collections (Python's default: 700); the older generations'
# thresholds stay Python's.
YOUNG_THRESHOLD = 10_000


# glibc's mallopt parameter, and the size from which buffers are always mmapped.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune() -> None:
    """Sets the thresholds for this process. Called once, before the server's loop starts."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    _map_large_buffers()


def _map_large_buffers() -> None:
    """glibc: every buffer of 128 KiB or more is mmapped, and unmapped when freed. By
    default the threshold rises with each large buffer freed (up to 32 MiB), after which
    the payload chunks the server moves (1 MiB each) are carved from the worker threads'
    heaps and stay there once freed: under load the server's RSS grew by 134-146 MiB while a
    200 MiB payload passed through it (tests/test_payload_refs.py; 50-60 MiB unloaded).
    Setting it fixes it. Nothing happens on another C library."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return
