"""A test app: torch's thread count set in setup(), as examples/mlp.py does, and a sync
handler that reports how many other threads helped with its matrix products.

The handler multiplies matrices for 0.2 s of its own thread's CPU time and counts the
threads of the process whose CPU time grew by at least a quarter of its own meanwhile,
other handler threads (computing at the same time) left out: the helper threads of torch's
intra-op pool. With `torch.set_num_threads(1)` holding in the
handler's thread there are none; where it does not hold, OpenMP runs each product on every
core and each extra core's thread shows up here.
"""

from __future__ import annotations

import os
import threading
import time

import msgspec

import falrt


class Empty(msgspec.Struct):
    pass


class Report(msgspec.Struct):
    default_threads: int  # torch's intra-op threads before setup() set them
    setting: int  # torch.get_num_threads() in the handler's thread
    helpers: int  # other threads that computed with the handler's thread


def thread_cpu_ns() -> dict[str, int]:
    """CPU nanoseconds of each live thread of this process, by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                out[tid] = int(stat.read().split()[0])
        except OSError:
            continue  # the thread ended meanwhile
    return out


class ThreadSet(falrt.App):
    app_name = "threadset"
    requirements = ["torch==2.13.0"]
    max_multiplexing = 2
    keep_alive = 300

    def setup(self) -> None:
        import torch

        self.default_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.handler_threads: set[str] = set()  # (a set's add is atomic: no lock needed)

    @falrt.endpoint("/")
    def products(self, request: Empty) -> Report:
        import torch

        me = str(threading.get_native_id())
        self.handler_threads.add(me)
        matrix = torch.randn(512, 512)
        before = thread_cpu_ns()
        until = time.thread_time() + 0.2
        while time.thread_time() < until:
            matrix @ matrix
        after = thread_cpu_ns()
        own = after[me] - before[me]
        helpers = sum(1 for tid, ns in after.items()
                      if tid not in self.handler_threads and ns - before.get(tid, 0) >= own / 4)
        return Report(self.default_threads, torch.get_num_threads(), helpers)
