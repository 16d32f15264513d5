"""FIFO gates: a test app blocks reading a FIFO until the test writes one byte to it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tests.harness import wait_for


def make_gate(path: Path) -> Path:
    os.mkfifo(path)
    return path


def release(gate: Path, timeout: float = 60.0) -> None:
    """Waits until the app holds `gate` open for reading, then lets it go on."""

    def open_writer() -> int | None:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise

    fd = wait_for(open_writer, timeout, what=f"a reader on {gate}")
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
