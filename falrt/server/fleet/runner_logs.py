"""Reading a runner's log file: what is there, then what the runner writes next.

A runner's stdout and stderr go straight from its process into
`<data_dir>/runners/<runner id>.log` (the backend hands the process the file), so there is
no event when a line lands: following reads the file again every `FOLLOW_INTERVAL_S`, as
`tail -f` does, until the runner has ended and everything it wrote has been sent.

The log of a runner that no longer runs is removed once nothing was written to it for the
server's `runner_log_retention_s` (`remove_old`, run by the fleet).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from falrt import errors

FOLLOW_INTERVAL_S = 0.25
RUNNER_ID = re.compile(r"^r-[0-9a-f]{12}$")
_CHUNK = 1 << 16


def check_runner_id(runner_id: str) -> None:
    if not RUNNER_ID.match(runner_id):
        raise errors.InvalidArgumentError(
            f"invalid runner id {errors.quote(runner_id)}: runner ids look like r-0123456789ab "
            "(`falrt runners list` shows them)")


async def read_lines(
    path: Path, *, tail: int, follow: bool, running: Callable[[], bool]
) -> AsyncIterator[list[str]]:
    """Yields the file's lines in batches: all of them (or the last `tail`), then, with
    `follow`, new complete lines until `running()` is False and the file is read to its end."""
    if not await asyncio.to_thread(path.is_file):
        raise errors.NotFoundError(
            f"no log for runner {path.stem} (it never started here, or its log was removed)")
    data, offset = await asyncio.to_thread(_read_from, path, 0)
    lines, rest = _split(data)
    if tail > 0:
        lines = list(deque(lines, maxlen=tail))
    if lines:
        yield lines
    while follow:
        still_running = running()  # checked before reading: nothing written is missed
        data, offset = await asyncio.to_thread(_read_from, path, offset)
        lines, rest = _split(rest + data)
        if lines:
            yield lines
        elif not still_running:
            if rest:
                yield [rest.decode(errors="replace")]
            return
        else:
            await asyncio.sleep(FOLLOW_INTERVAL_S)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(_CHUNK * 16)
    return data, offset + len(data)


def _split(data: bytes) -> tuple[list[str], bytes]:
    """Complete lines (decoded) and the unfinished rest."""
    *complete, rest = data.split(b"\n")
    return [line.decode(errors="replace") for line in complete], rest


def remove_old(logs_dir: Path, retention_s: float, running: set[str]) -> int:
    """Removes the logs of runners not in `running` last written over `retention_s` ago;
    how many. Blocking (call it in a thread); a file that vanishes meanwhile is skipped."""
    cutoff = time.time() - retention_s
    removed = 0
    for path in logs_dir.glob("r-*.log"):
        if path.stem in running:
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
