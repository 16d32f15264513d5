"""Per-thread settings that `setup()` made, carried into the threads that run sync handlers.

Sync handlers run in the shim's ThreadPoolExecutor, not on the main thread that ran
`setup()`. Some libraries keep their settings per OS thread: `torch.set_num_threads(n)`
sets the calling thread's OpenMP and MKL thread counts, and a thread started later begins
from the defaults (every core). So `torch.set_num_threads(1)` in `setup()` (as
examples/mlp.py does, to keep a batch-1 model from contending with the other requests'
threads) would not hold in the handler threads: each would compute on every core.

The pool's initializer therefore replays such settings, read once after `setup()`, in
each handler thread as it starts. Running `setup()` in a handler thread instead would not
do: the pool has several threads and `setup()` runs once, and `setup()` may need the main
thread (signal handlers). Settings made inside a handler hold for that thread only; an
app that needs another per-thread setting makes it in its handler (docs/concepts.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["handler_thread_initializer"]


def handler_thread_initializer() -> Callable[[], None] | None:
    """What each handler thread runs first: torch's intra-op thread count as the main
    thread has it after `setup()` (when the app imported torch); None when there is
    nothing to carry."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    threads = torch.get_num_threads()
    return lambda: torch.set_num_threads(threads)
