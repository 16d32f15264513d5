"""The server's subprocess output pipes (falrt/backends/spawn.py): read to the end, lines
intact, and each descriptor closed exactly once, on uvloop as the server runs it.

uvloop's pipe transport closed a descriptor twice (libuv, then the file object), so a
`subprocess.run` in a worker thread that had just been given the same number failed with
EBADF: the environment build's second step failed that way once. The race is probed by
starting processes in threads while the loop reads its pipes; with the transport it showed
within a few hundred reads.
"""

from __future__ import annotations

import subprocess
import threading

import pytest
import uvloop

from falrt.backends.spawn import run_streaming

pytestmark = pytest.mark.e2e


def test_output_lines_arrive_whole_and_the_last_without_a_newline() -> None:
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    code = uvloop.run(run_streaming(
        ["sh", "-c", "printf 'one\\ntwo\\n'; printf 'x%.0s' $(seq 70000); printf '\\nlast'"],
        collect))
    assert code == 0
    assert lines[:2] == ["one", "two"] and lines[2] == "x" * 70000 and lines[3:] == ["last"]


def test_reading_pipes_closes_no_descriptor_another_thread_owns() -> None:
    stop = threading.Event()
    failures: list[str] = []

    def start_processes() -> None:
        while not stop.is_set():
            try:
                subprocess.run(["true"], capture_output=True, check=True)
            except OSError as exc:
                failures.append(repr(exc))

    async def ignore(line: str) -> None:
        return None

    async def read_many() -> None:
        for _ in range(400):
            assert await run_streaming(["true"], ignore) == 0

    threads = [threading.Thread(target=start_processes) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        uvloop.run(read_many())
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
