"""Batching on the runner link: what each side has ready goes out together, in order, in
messages that stay within the room every message has (falrt/server/api/runner_link.py
`coalesce`, shim/outbox.py `coalesce`). The end-to-end halves: tests/test_shim.py (an
AssignBatch served, results batched) and every e2e test (a server and real runners)."""

from __future__ import annotations

import pytest
from falrt.shim import outbox, wire

from falrt.errors import RequestCancelledError
from falrt.limits import ENVELOPE_BYTES
from falrt.server.api import runner_link
from falrt.server.state.runners import AssignEvent, CancelEvent, CloseEvent, DrainEvent
from falrt.server.state.work import QueuedRequest
from falrt.store.records import Priority
from falrt.v1 import runner_pb2

pytestmark = pytest.mark.unit


def request(request_id: str, size: int = 10) -> QueuedRequest:
    return QueuedRequest(request_id=request_id, app_name="a", path="/", input=b"x" * size,
                         content_type="application/json", priority=Priority.NORMAL, seq=1)


def assigned_ids(message: runner_pb2.ServerMessage | None) -> list[str]:
    assert message is not None
    if message.HasField("assign"):
        return [message.assign.request_id]
    return [a.request_id for a in message.assigns.assigns]


def test_assignments_ready_together_share_a_message_and_keep_their_order() -> None:
    events = [AssignEvent(request("r1")), AssignEvent(request("r2")),
              CancelEvent("r0"), AssignEvent(request("r3"))]
    messages = runner_link.coalesce(events)  # type: ignore[arg-type]
    assert [m.WhichOneof("event") for m in messages if m] == ["assigns", "cancel", "assign"]
    assert assigned_ids(messages[0]) == ["r1", "r2"]
    batch = messages[0].assigns.assigns  # type: ignore[union-attr]
    assert batch[1].input.data == b"x" * 10 and batch[1].path == "/"
    assert assigned_ids(messages[2]) == ["r3"]


def test_a_lone_assignment_goes_as_a_plain_assign() -> None:
    [message] = runner_link.coalesce([AssignEvent(request("r1"))])
    assert message is not None and message.WhichOneof("event") == "assign"


def test_a_close_ends_the_messages_and_nothing_after_it_is_sent() -> None:
    events = [AssignEvent(request("r1")), CloseEvent(), DrainEvent()]
    messages = runner_link.coalesce(events)  # type: ignore[arg-type]
    assert [assigned_ids(messages[0]), messages[1:]] == [["r1"], [None]]


def test_an_assign_batch_stays_within_the_room_of_a_message() -> None:
    big = runner_link.BATCH_INPUT_BYTES // 2 + 1
    many = [AssignEvent(request(f"s{i}")) for i in range(runner_link.BATCH_ASSIGNS + 1)]
    events = [AssignEvent(request("b1", big)), AssignEvent(request("b2", big)), *many]
    messages = runner_link.coalesce(events)  # type: ignore[arg-type]
    sizes = [len(assigned_ids(m)) for m in messages]
    assert sizes == [1, runner_link.BATCH_ASSIGNS, 2]  # b1 | b2 + 63 small | the last 2
    assert all(m is not None and m.ByteSize() < ENVELOPE_BYTES for m in messages)
    assert sum(sizes) == len(events)


def result_ids(message: runner_pb2.RunnerMessage) -> list[str]:
    if message.HasField("result"):
        return [message.result.request_id]
    return [r.request_id for r in message.results.results]


def test_results_ready_together_share_a_message_and_logs_keep_their_place() -> None:
    log = wire.log_message("r2", "printed", "stdout")
    items = [wire.ok_result("r1", b'{"a": 1}', "application/json", 0.001),
             wire.error_result("r3", RequestCancelledError("cancelled")),
             log, wire.ok_result("r2", b"{}", "application/json", 0.002)]
    messages = outbox.coalesce(items)
    assert [m.WhichOneof("event") for m in messages] == ["results", "log", "result"]
    assert result_ids(messages[0]) == ["r1", "r3"]
    first, second = messages[0].results.results
    assert first.output.data == b'{"a": 1}' and first.inference_time.ToNanoseconds() == 1_000_000
    assert second.error.error_type == "client_cancelled" and not second.HasField("output")
    assert messages[1] is log


def test_a_result_batch_stays_within_the_room_of_a_message() -> None:
    big = outbox.BATCH_RESULT_BYTES // 2 + 1
    items = [wire.ok_result(f"b{i}", b"x" * big, "application/json", 0.0) for i in range(2)]
    items += [wire.ok_result(f"s{i}", b"{}", "", 0.0) for i in range(outbox.BATCH_RESULTS + 1)]
    messages = outbox.coalesce(items)
    sizes = [len(result_ids(m)) for m in messages]
    assert sizes == [1, outbox.BATCH_RESULTS, 2]
    assert all(m.ByteSize() < ENVELOPE_BYTES for m in messages)


def test_a_handlers_verdict_travels_in_its_result() -> None:
    result = wire.ok_result("r1", None, "", 0.0)
    result.needs_retry, result.stop_runner = True, False
    [message] = outbox.coalesce([result])
    assert message.result.needs_retry is True and message.result.HasField("stop_runner")
    assert not message.result.stop_runner and not message.result.HasField("output")
