"""The scheduler and dispatcher in-process: requests over the memory store, runners played by
the test through the inprocess backend (tests/inprocess.py). Milliseconds per test."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from falrt.server.api.queue_service import QueueService
from falrt.server.queue.recorder import FOLLOWED_INSERT_WAIT_S
from falrt.server.queue.requests import Requests
from falrt.server.state.runners import CancelEvent, RunnerHandle, RunnerState
from falrt.server.state.transitions import IllegalTransition
from falrt.store.records import Priority, Status
from falrt.store.sqlite import SQLiteStore
from falrt.v1 import common_pb2, queue_pb2
from falrt.vocabulary import CancelOutcome
from tests.inprocess import Lab, completed, lab, run

pytestmark = pytest.mark.unit


def test_a_submitted_request_starts_a_runner_runs_there_and_is_stored_completed(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            world.deploy("echo")
            request_id = await world.submit("echo", b'{"x": 1}')
            item = world.planes.scheduler.position_of(request_id)
            assert item == 0
            runner = await world.runner("echo")
            assigned = await world.assigned(runner)
            assert (assigned.request_id, assigned.input) == (request_id, b'{"x": 1}')
            queued = await world.planes.scheduler.lookup(request_id)
            assert queued is not None and queued.status is Status.IN_PROGRESS
            assert queued.attempts == 1
            world.answer(runner, assigned, b'{"y": 2}')
            await completed(queued)
            stored = await world.store.get_request(request_id)
            assert stored is not None and stored.status is Status.COMPLETED
            assert stored.outcome is not None and stored.outcome.output == b'{"y": 2}'
            assert runner.state is RunnerState.IDLE and not runner.in_flight

    run(scenario)


def test_work_of_a_runner_that_goes_away_is_retried_on_another_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=1) as world:
            world.deploy("echo")
            request_id = await world.submit("echo")
            first = await world.runner("echo")
            await world.assigned(first)
            world.planes.fleet.detached(first)  # its stream ended mid-request
            item = await world.planes.scheduler.lookup(request_id)
            assert item is not None and item.status is Status.IN_QUEUE
            assert "runner_disconnected" in item.waiting_reason
            second = await world.runner("echo")
            again = await world.assigned(second)
            assert again.request_id == request_id and item.attempts == 2
            world.answer(second, again)
            await completed(item)
            assert item.outcome is not None and item.outcome.error is None

    run(scenario)


def test_a_request_cancelled_while_queued_never_reaches_a_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=0) as world:  # no runner may start
            world.deploy("echo")
            request_id = await world.submit("echo")
            assert await world.planes.scheduler.cancel(request_id) is (
                CancelOutcome.CANCELLATION_REQUESTED)
            item = await world.planes.scheduler.lookup(request_id)
            assert item is not None
            await completed(item)
            assert item.outcome is not None and item.outcome.error is not None
            assert item.outcome.error.error_type == "client_cancelled"
            assert await world.planes.scheduler.cancel(request_id) is (
                CancelOutcome.ALREADY_COMPLETED)
            assert await world.planes.scheduler.cancel("no-such-id") is CancelOutcome.NOT_FOUND
            assert world.backend.started == []

    run(scenario)


def test_a_running_request_is_cancelled_on_its_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            world.deploy("echo")
            request_id = await world.submit("echo")
            runner = await world.runner("echo")
            await world.assigned(runner)
            assert await world.planes.scheduler.cancel(request_id) is (
                CancelOutcome.CANCELLATION_REQUESTED)
            assert await runner.outbox.get() == CancelEvent(request_id)

    run(scenario)


def test_low_priority_waits_behind_normal_and_runs_after_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=1) as world:
            world.deploy("echo")
            low = await world.submit("echo", priority=Priority.LOW)
            normal = await world.submit("echo")
            scheduler = world.planes.scheduler
            assert (scheduler.position_of(normal), scheduler.position_of(low)) == (0, 1)
            runner = await world.runner("echo")
            first = await world.assigned(runner)
            assert first.request_id == normal
            world.answer(runner, first)
            second = await world.assigned(runner)
            assert second.request_id == low

    run(scenario)


def test_a_handlers_error_without_a_verdict_is_not_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        from falrt.store.records import ErrorRecord, Outcome

        async with lab(tmp_path) as world:
            world.deploy("echo")
            request_id = await world.submit("echo")
            runner = await world.runner("echo")
            item = await world.assigned(runner)
            error = ErrorRecord("runner_server_error", "boom", 13)
            world.planes.dispatcher.on_result(runner, item.request_id, Outcome(error=error))
            queued = await world.planes.scheduler.lookup(request_id)
            assert queued is not None
            await completed(queued)
            assert queued.attempts == 1
            assert queued.outcome is not None and queued.outcome.error == error

    run(scenario)


def test_a_request_status_cannot_leave_completed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            world.deploy("echo")
            request_id = await world.submit("echo")
            runner = await world.runner("echo")
            world.answer(runner, await world.assigned(runner))
            item = await world.planes.scheduler.lookup(request_id)
            assert item is not None
            await completed(item)
            with pytest.raises(IllegalTransition, match="COMPLETED -> IN_QUEUE"):
                item.set_status(Status.IN_QUEUE)

    run(scenario)


def test_request_ids_are_random_version_4_uuids_unique_across_servers() -> None:
    first, second = Requests(), Requests()
    # (more than one read of random bytes per server: ID_RANDOM_BYTES holds 256 ids)
    ids = [r.new_id() for r in (first, second) for _ in range(600)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_subscribe_whose_result_is_there_once_it_is_stored_gets_one_message(
    tmp_path: Path,
) -> None:
    """The acknowledgement (the request is durable) and the completion go as one message when
    the result came while the request's INSERT was being committed."""
    entered, release = threading.Event(), threading.Event()

    def hold(size: int, seconds: float) -> None:  # (on the writer thread, after a commit)
        if not entered.is_set():
            entered.set()
            release.wait(5.0)

    async def scenario() -> None:
        store = SQLiteStore(tmp_path / "falrt.db")
        await store.open()
        async with lab(tmp_path, store=store) as planes:
            planes.deploy("echo", min_concurrency=1)
            runner = await planes.runner("echo")
            store.on_batch = hold
            request = queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
                endpoint_id="local/echo", input=common_pb2.Payload(data=b"{}")))
            updates = QueueService(planes.planes.scheduler).Subscribe(request, None)  # type: ignore[arg-type]
            first = asyncio.ensure_future(anext(updates))
            item = await planes.assigned(runner)
            assert await asyncio.to_thread(entered.wait, 5.0)  # its INSERT is committed
            planes.answer(runner, item, b'{"ok": 1}')  # the result comes before Submit answers
            release.set()
            state = (await first).state
            assert state.status == common_pb2.REQUEST_STATUS_COMPLETED
            assert state.output.data == b'{"ok": 1}'
            assert [update async for update in updates] == []
        await store.close()

    run(scenario)


@asynccontextmanager
async def _echo_lab(tmp_path: Path) -> AsyncIterator[tuple[Lab, SQLiteStore, RunnerHandle]]:
    """The planes over a SQLite store, with the app "echo" and its runner attached."""
    store = SQLiteStore(tmp_path / "falrt.db")
    await store.open()
    try:
        async with lab(tmp_path, store=store) as world:
            world.deploy("echo", min_concurrency=1)
            yield world, store, await world.runner("echo")
    finally:
        await store.close()


def _subscribe(world: Lab) -> AsyncIterator[queue_pb2.WatchResponse]:
    request = queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
        endpoint_id="local/echo", input=common_pb2.Payload(data=b"{}")))
    return QueueService(world.planes.scheduler).Subscribe(request, None)  # type: ignore[arg-type]


def test_a_subscribe_whose_request_ends_at_once_is_stored_completed_in_one_write(
    tmp_path: Path,
) -> None:
    """A request a runner took at once, followed by its caller, whose result comes within
    FOLLOWED_INSERT_WAIT_S: its row is written once, completed, and the caller's first
    message (sent once that write is durable) is the completion."""
    async def scenario() -> None:
        async with _echo_lab(tmp_path) as (world, store, runner):
            batches: list[int] = []
            store.on_batch = lambda size, seconds: batches.append(size)
            updates = _subscribe(world)
            first = asyncio.ensure_future(anext(updates))
            item = await world.assigned(runner)
            world.answer(runner, item, b'{"ok": 1}')
            state = (await first).state
            assert state.status == common_pb2.REQUEST_STATUS_COMPLETED
            assert state.output.data == b'{"ok": 1}'
            assert [update async for update in updates] == []
            assert batches == [1]  # one statement, one commit
            stored = await store.get_request(item.request_id)
            assert stored is not None and stored.status is Status.COMPLETED
            assert stored.attempts == 1 and stored.outcome is not None
            assert stored.outcome.output == b'{"ok": 1}' and stored.completed_at is not None

    run(scenario)


def test_a_subscribe_whose_request_runs_longer_is_acknowledged_after_the_wait(
    tmp_path: Path,
) -> None:
    """Past FOLLOWED_INSERT_WAIT_S the request is stored as it stands (IN_PROGRESS, its
    attempt counted) and its caller told so; its result is stored later, as usual."""
    async def scenario() -> None:
        async with _echo_lab(tmp_path) as (world, store, runner):
            updates = _subscribe(world)
            began = time.monotonic()
            first = asyncio.ensure_future(anext(updates))
            item = await world.assigned(runner)
            assert (await first).state.status == common_pb2.REQUEST_STATUS_IN_PROGRESS
            assert time.monotonic() - began >= FOLLOWED_INSERT_WAIT_S
            stored = await store.get_request(item.request_id)
            assert stored is not None and stored.status is Status.IN_PROGRESS
            assert stored.attempts == 1
            world.answer(runner, item, b'{"ok": 2}')
            last = [update async for update in updates][-1].state
            assert last.status == common_pb2.REQUEST_STATUS_COMPLETED
            stored = await store.get_request(item.request_id)
            assert stored is not None and stored.status is Status.COMPLETED

    run(scenario)


def test_a_followed_request_still_waiting_to_be_written_is_stored_when_the_server_stops(
    tmp_path: Path,
) -> None:
    written: list[str] = []

    async def scenario() -> None:
        async with _echo_lab(tmp_path) as (world, _store, runner):
            updates = _subscribe(world)
            first = asyncio.ensure_future(anext(updates))
            item = await world.assigned(runner)
            await world.planes.recorder.close()  # (before the wait ends)
            assert (await first).state.status == common_pb2.REQUEST_STATUS_IN_PROGRESS
        written.append(item.request_id)

    run(scenario)

    async def read() -> None:
        store = SQLiteStore(tmp_path / "falrt.db")
        await store.open()
        stored = await store.get_request(written[0])  # (requeued when its runner went)
        assert stored is not None and stored.status is not Status.COMPLETED
        await store.close()

    run(read)
