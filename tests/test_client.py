"""The Python client: status converters, and both clients against a real grpc.aio server.

The server here is a minimal Queue servicer written for these tests (canned answers keyed by
request id); it runs on its own event loop in a thread so the blocking client can call it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import msgspec
import pytest

from falrt.client import (
    AsyncClient,
    Completed,
    InProgress,
    LogLine,
    Queued,
    RequestError,
    Status,
    SyncClient,
    split_endpoint_ref,
)
from falrt.client.status import status_from_proto, status_to_proto
from falrt.errors import (
    InvalidArgumentError,
    NotCompletedError,
    NotFoundError,
    RequestTimeoutError,
    RunnerServerError,
    UnavailableError,
    ValidationFailedError,
    to_proto,
    trailing_metadata,
)
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

pytestmark = pytest.mark.unit

LOG = LogLine(datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), "loading model", "stderr")
FAILURE = RequestError(
    error_type="runner_server_error", message="boom", grpc_code=13, traceback="Traceback ..."
)
STATUSES: dict[str, list[Status]] = {
    "req-ok": [Queued(position=1), InProgress(logs=(LOG,)),
               Completed(logs=(LOG,), output={"text": "hi"}, inference_time_s=0.25)],
    "req-fail": [Completed(error=FAILURE)],
}


class CannedQueue(queue_pb2_grpc.QueueServicer):
    """Canned answers: `local/invalid` fails validation, `local/slow` never completes."""

    def __init__(self) -> None:
        self.submitted: list[queue_pb2.SubmitRequest] = []
        self.cancelled: list[str] = []

    async def Submit(self, request: Any, context: Any) -> queue_pb2.SubmitResponse:
        if request.endpoint_id == "local/invalid":
            error = ValidationFailedError("input is invalid", field_errors=[("$.name", "required")])
            await context.abort(error.code, error.message,
                                trailing_metadata=trailing_metadata(to_proto(error)))
        self.submitted.append(request)
        request_id = "req-slow" if request.endpoint_id == "local/slow" else "req-ok"
        return queue_pb2.SubmitResponse(request_id=request_id, queue_position=2)

    async def Subscribe(
        self, request: Any, context: Any
    ) -> AsyncIterator[queue_pb2.WatchResponse]:
        submitted = await self.Submit(request.submit, context)
        watch = queue_pb2.WatchRequest(request_id=submitted.request_id,
                                       with_logs=request.with_logs)
        async for reply in self.Watch(watch, context):
            yield reply

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[queue_pb2.WatchResponse]:
        if request.request_id == "req-slow":
            yield queue_pb2.WatchResponse(
                state=status_to_proto(Queued(position=5), request.request_id))
            await asyncio.Event().wait()
        for status in STATUSES[request.request_id]:
            state = status_to_proto(status, request.request_id)
            if not request.with_logs:
                del state.logs[:]
            yield queue_pb2.WatchResponse(state=state)

    async def GetStatus(self, request: Any, context: Any) -> queue_pb2.GetStatusResponse:
        queued = Queued(position=3, waiting_reason="no GPU")
        return queue_pb2.GetStatusResponse(state=status_to_proto(queued))

    async def GetResult(self, request: Any, context: Any) -> queue_pb2.GetResultResponse:
        if request.request_id == "req-pending":
            error = NotCompletedError("request req-pending is IN_QUEUE")
            await context.abort(error.code, error.message,
                                trailing_metadata=trailing_metadata(to_proto(error)))
        if request.request_id not in STATUSES:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such request")
        state = status_to_proto(STATUSES[request.request_id][-1])
        return queue_pb2.GetResultResponse(
            request_id=request.request_id,
            output=state.output if state.HasField("output") else None,
            error=state.error if state.HasField("error") else None,
        )

    async def Cancel(self, request: Any, context: Any) -> queue_pb2.CancelResponse:
        self.cancelled.append(request.request_id)
        return queue_pb2.CancelResponse(outcome=queue_pb2.CANCEL_OUTCOME_CANCELLATION_REQUESTED)

    async def Run(self, request: Any, context: Any) -> queue_pb2.RunResponse:
        return queue_pb2.RunResponse(request_id="direct", output=request.input)

    async def Stream(self, request: Any, context: Any) -> AsyncIterator[queue_pb2.StreamResponse]:
        for index in range(3):
            data = msgspec.json.encode({"index": index, "path": request.path})
            yield queue_pb2.StreamResponse(output=common_pb2.Payload(data=data))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, CannedQueue]]:
    """A grpc.aio server on port 0, on its own loop in a thread: (host, servicer)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servicer = CannedQueue()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        queue_pb2_grpc.add_QueueServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    yield f"127.0.0.1:{port}", servicer
    asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.fixture
def client(served: tuple[str, CannedQueue]) -> Iterator[SyncClient]:
    with SyncClient(served[0]) as sync_client:
        yield sync_client


# --- converters -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "status",
    [
        Queued(position=4, waiting_reason="starting a runner"),
        InProgress(logs=(LOG,)),
        Completed(logs=(LOG,), output={"a": [1, 2.5, None]}, inference_time_s=1.5),
        Completed(output=None),
        Completed(error=RequestError("bad_request", "no", 3, (("$.x", "missing"),))),
    ],
)
def test_a_status_survives_a_round_trip_through_its_proto(status: Status) -> None:
    assert status_from_proto(status_to_proto(status)) == status


def test_a_proto_survives_a_round_trip_through_its_status() -> None:
    state = queue_pb2.RequestState(
        request_id="r", status=common_pb2.REQUEST_STATUS_COMPLETED,
        output=common_pb2.Payload(data=b'{"x":1}', content_type="application/json"),
    )
    state.metrics.inference_time.FromMilliseconds(1250)
    state.logs.add(message="m", source="stdout").timestamp.FromSeconds(7)
    assert status_to_proto(status_from_proto(state), "r") == state


def test_statuses_encode_to_json_with_fal_state_names() -> None:
    encoded = msgspec.json.decode(msgspec.json.encode(Queued(position=2)))
    assert encoded == {"status": "IN_QUEUE", "position": 2, "waiting_reason": ""}


def test_a_failed_completion_raises_its_typed_error() -> None:
    with pytest.raises(RunnerServerError, match="boom") as caught:
        Completed(error=FAILURE).output_or_raise()
    assert caught.value.traceback == "Traceback ..."


@pytest.mark.parametrize(
    ("ref", "path", "expected"),
    [
        ("alice/app", None, ("alice/app", "/")),
        ("alice/app/sub/path", None, ("alice/app", "/sub/path")),
        ("alice/app", "embed", ("alice/app", "/embed")),
    ],
)
def test_endpoint_refs_split_into_id_and_path(
    ref: str, path: str | None, expected: tuple[str, str]
) -> None:
    assert split_endpoint_ref(ref, path) == expected


@pytest.mark.parametrize(("ref", "path"), [("app", None), ("alice/app/x", "/y")])
def test_a_malformed_endpoint_ref_is_rejected(ref: str, path: str | None) -> None:
    with pytest.raises(InvalidArgumentError):
        split_endpoint_ref(ref, path)


# --- sync client ----------------------------------------------------------------------------

def test_submit_encodes_the_arguments_once_as_json(
    client: SyncClient, served: tuple[str, CannedQueue]
) -> None:
    class Args(msgspec.Struct):
        prompt: str

    handle = client.submit("local/hello", Args(prompt="a cat"), path="sub", priority="low")
    assert (handle.request_id, handle.queue_position) == ("req-ok", 2)
    sent = served[1].submitted[-1]
    assert (sent.path, sent.priority) == ("/sub", common_pb2.PRIORITY_LOW)
    assert (sent.input.data, sent.input.content_type) == (b'{"prompt":"a cat"}', "application/json")


def test_a_validation_failure_keeps_its_field_errors(client: SyncClient) -> None:
    with pytest.raises(ValidationFailedError) as caught:
        client.submit("local/invalid", {})
    assert caught.value.field_errors == (("$.name", "required"),)


def test_watch_yields_typed_statuses_until_completed(client: SyncClient) -> None:
    statuses = list(client.watch("req-ok"))
    assert statuses == STATUSES["req-ok"]


def test_result_raises_the_error_of_a_failed_request(client: SyncClient) -> None:
    assert client.result("req-ok") == {"text": "hi"}
    with pytest.raises(RunnerServerError, match="boom"):
        client.result("req-fail")


def test_result_of_an_unfinished_request_raises_not_completed(client: SyncClient) -> None:
    with pytest.raises(NotCompletedError):
        client.result("req-pending")
    with pytest.raises(NotFoundError):
        client.result("req-unknown")


def test_status_and_cancel_answer_in_fal_terms(client: SyncClient) -> None:
    assert client.status("req-ok") == Queued(position=3, waiting_reason="no GPU")
    assert client.cancel("req-ok") == "CANCELLATION_REQUESTED"


def test_subscribe_reports_every_update_and_returns_the_output(client: SyncClient) -> None:
    updates: list[Status] = []
    enqueued: list[str] = []
    output = client.subscribe("local/hello", {}, with_logs=True,
                              on_enqueue=enqueued.append, on_queue_update=updates.append)
    assert output == {"text": "hi"}
    assert enqueued == ["req-ok"]
    assert updates == STATUSES["req-ok"]


def test_subscribe_cancels_and_raises_when_the_client_timeout_passes(
    client: SyncClient, served: tuple[str, CannedQueue]
) -> None:
    handle_ids: list[str] = []
    with pytest.raises(RequestTimeoutError, match=r"did not complete within 0\.3 s"):
        client.subscribe("local/slow", {}, on_enqueue=handle_ids.append, client_timeout=0.3)
    assert served[1].cancelled[-1] == handle_ids[0]


def test_slow_watch_times_out_and_get_of_a_handle_waits(client: SyncClient) -> None:
    with pytest.raises(RequestTimeoutError):
        list(client.watch("req-slow", timeout=0.2))
    assert client.submit("local/hello", {}).get() == {"text": "hi"}


def test_run_and_stream_decode_each_output(client: SyncClient) -> None:
    assert client.run("local/hello", {"x": 1}) == {"x": 1}
    assert list(client.stream("local/hello", {}, path="/gen")) == [
        {"index": i, "path": "/gen"} for i in range(3)
    ]


def test_an_unreachable_server_raises_unavailable() -> None:
    with SyncClient("127.0.0.1:1") as unreachable, pytest.raises(UnavailableError):
        unreachable.status("req-ok")


def test_the_host_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FALRT_HOST", "example:1234")
    assert SyncClient().host == "example:1234"
    monkeypatch.delenv("FALRT_HOST")
    assert SyncClient().host == "127.0.0.1:50051"


# --- async client ---------------------------------------------------------------------------

def test_the_async_client_mirrors_the_sync_one(served: tuple[str, CannedQueue]) -> None:
    async def scenario() -> None:
        async with AsyncClient(served[0]) as aclient:
            handle = await aclient.submit("local/hello", {"n": 1})
            assert [s async for s in handle.watch()] == STATUSES["req-ok"]
            assert await handle.get() == {"text": "hi"}
            assert await aclient.run("local/hello", [1, 2]) == [1, 2]
            assert [p async for p in aclient.stream("local/hello", {})][-1]["index"] == 2
            with pytest.raises(RunnerServerError):
                await aclient.result("req-fail")
            with pytest.raises(ValidationFailedError):
                await aclient.subscribe("local/invalid", {})

    asyncio.run(scenario())


def test_async_subscribe_cancels_on_client_timeout(served: tuple[str, CannedQueue]) -> None:
    async def scenario() -> None:
        async with AsyncClient(served[0]) as aclient:
            with pytest.raises(RequestTimeoutError):
                await aclient.subscribe("local/slow", {}, client_timeout=0.2)

    asyncio.run(scenario())
