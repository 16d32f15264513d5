"""Counts of the work a falrt server or runner does per request, for bench/breakdown.py.

Nothing here runs unless a benchmark turns it on, so the hot path is unchanged when off: a
`falrt server` counts when started with this folder on PYTHONPATH and BENCH_COUNTERS naming
a folder (sitecustomize.py calls `install`), a runner when its app is noop_counted.py (which
calls `install` at import, before the shim starts its event loop). Counted, by kind:

- `task <coroutine>`: asyncio tasks created (the loop's task factory, by coroutine name);
- `future`: futures created with `loop.create_future()` (asyncio's and grpc.aio's own);
- `sent <Message>` / `received <Message>`: gRPC messages this process serialized or parsed
  as a client (grpc.aio's Python call objects; a runner's link messages each way). A
  server's own answers are written by grpc's compiled servicer code and not counted here;
- `sql <VERB>`: SQLite statements run (INSERT, UPDATE, COMMIT, ...; the store's writes).

A thread writes the counts as JSON to BENCH_COUNTERS/<role>-<pid>.json every 0.1 s (with
the time written, so a reader can wait for a dump taken after its load ended).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

DUMP_EVERY_S = 0.1
_counts: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def bump(key: str) -> None:
    with _lock:
        _counts[key] += 1


def install(folder: str, role: str) -> None:
    """Counts from now on in this process, dumped to `folder` as `role`-PID.json."""
    _count_tasks_and_futures()
    _count_grpc_messages()
    _count_sql()
    target = Path(folder) / f"{role}-{os.getpid()}.json"
    threading.Thread(target=_dump_forever, args=(target,), daemon=True,
                     name="bench-counters").start()


def _count_tasks_and_futures() -> None:
    """uvloop.run (how the server and the shim start their loop) makes its loop with a
    factory that counts tasks and futures."""
    import uvloop

    class CountingLoop(uvloop.Loop):  # type: ignore[misc]
        def create_future(self) -> asyncio.Future[Any]:
            bump("future")
            return super().create_future()

    def task_factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                     **kwargs: Any) -> asyncio.Task[Any]:
        bump(f"task {getattr(coro, '__qualname__', type(coro).__name__)}")
        return asyncio.Task(coro, loop=loop, **kwargs)

    def new_loop() -> uvloop.Loop:
        loop = CountingLoop()
        loop.set_task_factory(task_factory)
        return loop

    assert uvloop.run.__kwdefaults__ is not None
    uvloop.run.__kwdefaults__["loop_factory"] = new_loop


def _count_grpc_messages() -> None:
    from grpc import _common

    serialize, deserialize = _common.serialize, _common.deserialize

    def counted_serialize(message: Any, serializer: Callable[[Any], bytes] | None) -> Any:
        bump(f"sent {type(message).__name__}")
        return serialize(message, serializer)

    def counted_deserialize(data: bytes, deserializer: Callable[[bytes], Any] | None) -> Any:
        message = deserialize(data, deserializer)
        bump(f"received {type(message).__name__}")
        return message

    _common.serialize, _common.deserialize = counted_serialize, counted_deserialize


def _count_sql() -> None:
    connect = sqlite3.connect

    def counted_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: bump(f"sql {sql.split(None, 1)[0].upper()}"))
        return conn

    sqlite3.connect = counted_connect  # type: ignore[assignment]


def _dump_forever(target: Path) -> None:
    temporary = target.with_suffix(".tmp")
    while True:
        with _lock:
            counts = dict(_counts)
        temporary.write_text(json.dumps({"written_at": time.time(), "counts": counts}))
        os.replace(temporary, target)
        time.sleep(DUMP_EVERY_S)
