"""Owned tasks (falrt/server/tasks.py): a failure is logged and the rest go on; an essential
loop that ends by itself is reported; a stop or a close is not."""

from __future__ import annotations

import asyncio

import pytest

from falrt.server.tasks import Tasks

pytestmark = pytest.mark.unit


async def forever() -> None:
    await asyncio.Event().wait()


async def fail() -> None:
    raise RuntimeError("boom")


def test_a_failed_task_is_logged_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        tasks = Tasks("component")
        survivor = tasks.spawn(forever())
        await asyncio.gather(tasks.spawn(fail(), name="doomed"), return_exceptions=True)
        assert not survivor.done() and len(tasks) == 1
        await tasks.close()
        assert survivor.cancelled() and len(tasks) == 0

    asyncio.run(scenario())
    assert "a task of component failed (doomed)" in caplog.text


def test_an_essential_loop_that_ends_is_reported_but_not_one_stopped_or_closed() -> None:
    lost: list[str] = []

    async def scenario() -> None:
        tasks = Tasks("fleet", lost.append)
        ended = tasks.spawn(fail(), name="scaling", essential=True)
        await asyncio.gather(ended, return_exceptions=True)
        stopped = tasks.spawn(forever(), name="stopped", essential=True)
        tasks.stop(stopped)
        await asyncio.gather(stopped, return_exceptions=True)
        closed = tasks.spawn(forever(), name="closed", essential=True)
        await tasks.close()
        assert closed.cancelled()

    asyncio.run(scenario())
    assert lost == ["fleet's scaling"]


def test_drain_waits_for_work_but_not_for_essential_loops() -> None:
    async def scenario() -> None:
        tasks = Tasks("recorder")
        loop = tasks.spawn(forever(), essential=True)
        write = tasks.spawn(asyncio.sleep(0.01, result="written"))
        await asyncio.wait_for(tasks.drain(), 5)
        assert write.result() == "written" and not loop.done()
        await tasks.close()

    asyncio.run(scenario())
