"""What one durable commit costs on this disk, without falrt: the floor under every Submit.

    python bench/fsync.py [--dir DIR] [--n 500]

Times, in a temporary directory on the disk that holds DIR (default: the system's temporary
directory, where bench/queue_bench.py and bench/overhead.py keep their servers' data):

- `fdatasync` of a 4 KiB append (what SQLite calls once per commit in WAL mode with
  synchronous=FULL);
- one autocommit INSERT of a 200-byte row into a fresh SQLite file configured like falrt's
  store (WAL, synchronous=FULL, exclusive locking): the write, its WAL frames and the sync;
- the same INSERT with synchronous=OFF (no sync), to show what the sync itself costs.

Prints p50 and p90 in milliseconds. A queue-path call (Submit, then Watch until COMPLETED)
commits twice (the request, then its outcome), and Submit cannot answer before the first.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROW = b"y" * 200


def timed(n: int, step: Callable[[int], None]) -> tuple[float, float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        step(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3, statistics.quantiles(samples, n=10)[8] * 1e3


def database(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, data BLOB)")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description="the cost of one durable commit here")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="falrt-fsync-") as tmp_name:
        tmp = Path(tmp_name)
        fd = os.open(tmp / "file", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            def sync(_: int) -> None:
                os.write(fd, b"x" * 4096)
                os.fdatasync(fd)

            results = {"fdatasync (4 KiB append)": timed(args.n, sync)}
        finally:
            os.close(fd)
        for synchronous in ("FULL", "OFF"):
            conn = database(tmp / f"{synchronous}.db", synchronous)

            def insert(i: int, conn: sqlite3.Connection = conn) -> None:
                conn.execute("INSERT INTO t VALUES (?, ?)", (str(i), ROW))

            results[f"sqlite INSERT, WAL, synchronous={synchronous}"] = timed(args.n, insert)
            conn.close()
    for name, (p50, p90) in results.items():
        print(f"{name:42s} p50 {p50:6.3f} ms   p90 {p90:6.3f} ms")


if __name__ == "__main__":
    main()
