"""The edge's input check on a real server: a bad JSON input fails when it arrives, on every
path (queue, direct, the CLI, HTTP), even while the app has no runner that could say so;
what the runner would accept always passes (pydantic's lax mode), and the runner keeps the
last word."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from falrt import errors
from falrt.client import Queued, SyncClient, connection, credentials
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc
from tests.harness import ServerProcess, stop_cleanly
from tests.https import HTTP_LISTENING

pytestmark = pytest.mark.e2e

APP = "tests/apps/picky/picky.py"
PROMPT_S = 2.0  # an edge refusal answers at once; a queued request would wait far longer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("input-check")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=["--http-listen", "127.0.0.1:0"]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> SyncClient:
    return SyncClient(server.address)


@pytest.fixture(scope="module")
def broken(server: ServerProcess) -> str:
    """An app whose runners never start (its setup raises)."""
    return server.deploy(f"{APP}::BrokenPicky")


@pytest.fixture(scope="module")
def picky(server: ServerProcess) -> str:
    return server.deploy(f"{APP}::Picky")


def _refused(call: object) -> errors.ValidationFailedError:
    """The validation error a call raises, checked to come before any runner could answer."""
    assert callable(call)
    started = time.monotonic()
    with pytest.raises(errors.ValidationFailedError) as raised:
        call()
    assert time.monotonic() - started < PROMPT_S
    return raised.value


def test_bad_input_to_an_app_that_cannot_start_fails_at_once_on_every_path(
    server: ServerProcess, client: SyncClient, broken: str
) -> None:
    missing = _refused(lambda: client.submit(broken, {"count": 2}))
    assert missing.field_errors == (("$.item", "field required"),)
    wrong = _refused(lambda: client.run(broken, {"item": "tea", "count": "two"}))
    assert [loc for loc, _ in wrong.field_errors] == ["$.count"]
    _refused(lambda: client.subscribe(broken, ["not", "an", "object"]))

    started = time.monotonic()
    cli = server.cli("call", broken, "--data", '{"count": "x"}', check=False)
    assert time.monotonic() - started < PROMPT_S + 5  # (the CLI's own start-up)
    assert cli.returncode == 4, cli.stderr
    assert "$.item" in cli.stderr and "$.count" in cli.stderr

    http = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
    key = credentials.key_for(server.address)
    response = httpx.post(f"{http}/{broken}", json={"count": 2},
                          headers={"Authorization": f"Key {key}"}, timeout=PROMPT_S)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "item"]


def test_good_input_to_that_app_waits_with_the_startup_error_as_before(
    client: SyncClient, broken: str
) -> None:
    handle = client.submit(broken, {"item": "tea"})
    try:
        reason = next(u.waiting_reason for u in client.watch(handle.request_id, timeout=60)
                      if isinstance(u, Queued) and u.waiting_reason)
        assert "model weights missing" in reason
    finally:
        handle.cancel()


def test_what_pydantic_coerces_passes_the_edge_and_the_runner_converts_it(
    client: SyncClient, picky: str, broken: str
) -> None:
    assert client.run(picky, {"item": "tea", "count": "3"}, path="/lax") == {
        "line": "3 x tea"}
    # The shape of a pydantic input is still checked at the edge: a missing field, or an
    # array where an object goes, fails at once on the app that cannot start.
    missing = _refused(lambda: client.submit(broken, {"count": "3"}, path="/lax"))
    assert missing.field_errors == (("$.item", "field required"),)
    handle = client.submit(broken, {"item": "tea", "count": "3"}, path="/lax")  # queued
    handle.cancel()


def test_the_runner_keeps_the_last_word_on_what_the_edge_does_not_check(
    client: SyncClient, picky: str
) -> None:
    """A scalar type of a pydantic model is not checked at the edge: its runner refuses
    what pydantic cannot coerce, as a validation error naming the field."""
    with pytest.raises(errors.ValidationFailedError) as raised:
        client.run(picky, {"item": "tea", "count": "many"}, path="/lax")
    assert [loc for loc, _ in raised.value.field_errors] == ["$.count"]


def test_msgpack_inputs_are_left_to_the_runner(server: ServerProcess, broken: str) -> None:
    """msgpack is not checked at the edge: a bad msgpack input to the app that cannot start
    is stored and waits, as before."""
    payload = common_pb2.Payload(data=msgspec.msgpack.encode({"count": 1}),
                                 content_type="application/msgpack")
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        stored = stub.Submit(queue_pb2.SubmitRequest(endpoint_id=broken, input=payload))
        stub.Cancel(queue_pb2.CancelRequest(request_id=stored.request_id))
    assert stored.request_id


def test_the_check_is_shown_per_endpoint(server: ServerProcess, picky: str) -> None:
    app = json.loads(server.cli("apps", "get", "picky", "--output", "json").stdout)
    checks = {e["path"]: e["input_check"] for e in app["endpoints"]}
    assert checks == {"/": "exact", "/lax": "shape"}
