"""Children of the server start safely even while gRPC threads are busy."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvloop
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from falrt.backends.spawn import run_streaming, spawn

pytestmark = pytest.mark.unit


def test_children_started_under_grpc_load_do_not_crash() -> None:
    # Started with uvloop's fork(), about 6% of these children died of SIGSEGV before exec.
    async def scenario() -> list[int]:
        server = aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        done = asyncio.Event()

        async def load() -> None:
            while not done.is_set():
                await stub.Check(health_pb2.HealthCheckRequest())

        loaders = [asyncio.ensure_future(load()) for _ in range(8)]
        codes = []
        for _ in range(200):
            child = await spawn(["/bin/true"], new_session=True)
            codes.append(await child.wait())
        done.set()
        await asyncio.gather(*loaders)
        await channel.close()
        await server.stop(None)
        return codes

    assert set(uvloop.run(scenario())) == {0}


def test_exit_status_signals_and_streamed_lines() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        failing = await spawn(["/bin/sh", "-c", "exit 7"])
        sleeper = await spawn(["/bin/sleep", "60"], new_session=True)
        sleeper.send_signal(signal.SIGKILL, group=True)
        lines: list[str] = []

        async def collect(line: str) -> None:
            lines.append(line)

        code = await run_streaming(["/bin/sh", "-c", "echo one; echo two >&2; exit 3"], collect)
        assert code == 3
        return await failing.wait(), await sleeper.wait(), lines

    assert uvloop.run(scenario()) == (7, -signal.SIGKILL, ["one", "two"])
