"""Closed-loop load and the call functions that bench/overhead.py and bench/queue_bench.py
measure with.

`measure_interleaved(calls, concurrency, total)` runs, for each target in turn and in
alternating rounds, `concurrency` workers that each make calls back to back (after a
warm-up), and reports p50, p99 and requests per second per target. Every target is called
through the same kind of grpc.aio channel (or raw HTTP/1.1 connection) from this one
process, so their figures compare.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

log = logging.getLogger(__name__)
Call = Callable[[], Awaitable[None]]
CALL_TIMEOUT_S = 60.0
# Call metadata: the API key, as any gRPC client sends it (falrt.client.credentials).
Metadata = Sequence[tuple[str, str]]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    rps: float
    calls: int
    errors: int

    def as_json(self) -> dict[str, float | int]:
        return {"p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
                "rps": round(self.rps, 1), "calls": self.calls, "errors": self.errors}


async def measure_interleaved(
    calls: dict[str, Call], concurrency: int, total: int, *, warmup: int, cap_s: float,
    rounds: int = 5,
) -> dict[str, Figures]:
    """`measure` for several targets at once, in alternating rounds.

    Each round gives every target `total / rounds` calls in turn, so a slow spell of the
    (shared) machine falls on all targets alike instead of on whichever ran at that time:
    the ratios between targets stay fair even when absolute figures drift.
    """
    for call in calls.values():
        await asyncio.gather(*(_loop(call, warmup, [], [0], None) for _ in range(concurrency)))
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    errors = {name: [0] for name in calls}
    elapsed = dict.fromkeys(calls, 0.0)
    per_worker = max(1, total // rounds // concurrency)
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            deadline = started + cap_s / rounds
            await asyncio.gather(*(
                _loop(call, per_worker, latencies[name], errors[name], deadline)
                for _ in range(concurrency)
            ))
            elapsed[name] += time.perf_counter() - started
    return {name: _figures(latencies[name], errors[name][0], elapsed[name]) for name in calls}


async def _loop(
    call: Call, n: int, latencies: list[float], errors: list[int], deadline: float | None
) -> None:
    for _ in range(n):
        if deadline is not None and time.perf_counter() > deadline:
            return
        started = time.perf_counter()
        try:
            await call()
        except (grpc.RpcError, OSError, asyncio.IncompleteReadError, CallFailed) as exc:
            errors[0] += 1
            if errors[0] <= 3:
                log.warning("call failed: %s", _describe(exc))
            continue
        latencies.append(time.perf_counter() - started)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def _figures(latencies: list[float], errors: int, elapsed: float) -> Figures:
    if len(latencies) < 2:
        return Figures(float("nan"), float("nan"), 0.0, len(latencies), errors)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Figures(
        p50_ms=statistics.median(latencies) * 1000, p99_ms=cuts[98] * 1000,
        rps=len(latencies) / elapsed, calls=len(latencies), errors=errors,
    )


class CallFailed(Exception):
    """The call answered, but with an error (a falrt request that COMPLETED with one)."""


# -- call functions -------------------------------------------------------------------------


def grpc_bytes_call(channel: grpc.aio.Channel, method: str, body: bytes) -> Call:
    """A unary call of a bare server's generic bytes method."""
    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)

    async def call() -> None:
        await stub(body, timeout=CALL_TIMEOUT_S)

    return call


def payload(body: bytes) -> common_pb2.Payload:
    return common_pb2.Payload(data=body, content_type="application/json")


def falrt_direct_call(
    channel: grpc.aio.Channel, endpoint_id: str, body: bytes, metadata: Metadata = ()
) -> Call:
    """`Queue.Run` through the generated stub: one direct call."""
    stub = queue_pb2_grpc.QueueStub(channel)
    request = queue_pb2.RunRequest(endpoint_id=endpoint_id, path="/", input=payload(body))

    async def call() -> None:
        await stub.Run(request, timeout=CALL_TIMEOUT_S, metadata=metadata)

    return call


def falrt_submit_call(
    channel: grpc.aio.Channel, endpoint_id: str, body: bytes, metadata: Metadata = ()
) -> Call:
    """`Queue.Submit` alone: it answers once the request is durable."""
    stub = queue_pb2_grpc.QueueStub(channel)
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint_id, path="/", input=payload(body))

    async def call() -> None:
        await stub.Submit(request, timeout=CALL_TIMEOUT_S, metadata=metadata)

    return call


async def _until_completed(updates: Any, what: str) -> None:
    """Reads a Watch or Subscribe stream until COMPLETED; CallFailed for an error."""
    try:
        async for update in updates:
            if update.state.status == common_pb2.REQUEST_STATUS_COMPLETED:
                if update.state.HasField("error"):
                    raise CallFailed(update.state.error.message)
                return
    finally:
        updates.cancel()
    raise CallFailed(f"{what} ended before COMPLETED")


def falrt_queue_call(
    channel: grpc.aio.Channel, endpoint_id: str, body: bytes, metadata: Metadata = ()
) -> Call:
    """`Queue.Submit`, then `Queue.Watch` until the request is COMPLETED."""
    stub = queue_pb2_grpc.QueueStub(channel)
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint_id, path="/", input=payload(body))

    async def call() -> None:
        submitted = await stub.Submit(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        watch = stub.Watch(queue_pb2.WatchRequest(request_id=submitted.request_id),
                           timeout=CALL_TIMEOUT_S, metadata=metadata)
        await _until_completed(watch, f"watch of {submitted.request_id}")

    return call


def falrt_subscribe_call(
    channel: grpc.aio.Channel, endpoint_id: str, body: bytes, metadata: Metadata = ()
) -> Call:
    """`Queue.Subscribe` (Submit and Watch in one call) until the request is COMPLETED."""
    stub = queue_pb2_grpc.QueueStub(channel)
    request = queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
        endpoint_id=endpoint_id, path="/", input=payload(body)))

    async def call() -> None:
        updates = stub.Subscribe(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        await _until_completed(updates, "subscribe")

    return call


class HttpConnections:
    """One keep-alive HTTP/1.1 connection per worker, for the raw HTTP baseline."""

    def __init__(self, port: int, path: str = "/") -> None:
        self._port = port
        self._path = path
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    def call(self, body: bytes) -> Call:
        request = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (self._path.encode(), len(body), body))

        async def call() -> None:
            reader, writer = await self._take()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            self._idle.append((reader, writer))

        return call

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._all.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()
