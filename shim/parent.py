"""Tying a runner's life to the server process that started it (the process backend)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    """On Linux, asks the kernel to SIGKILL this process when `parent_pid` dies.

    A runner whose server is gone can serve nothing (the server re-queues its requests when
    it restarts), so it must not linger holding a GPU or a lock. Exits at once when the
    parent died before the request was made. Does nothing when `parent_pid` is None.
    """
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
