"""The queue's promises on a real server: retries, timeouts, deadlines, limits, idempotency."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt import errors
from falrt.client import Completed, InProgress, Queued, SyncClient, connection
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

FAST_RETRIES = ["--retry-backoff", "0.05", "--retry-backoff-cap", "0.2"]
LOCAL_WEBHOOKS = ["--webhook-allow", "127.0.0.0/8"]  # the test's receivers are on this machine


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that retries after 50 ms instead of 1 s."""
    root = tmp_path_factory.mktemp("promises")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=[*FAST_RETRIES, *LOCAL_WEBHOOKS]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def flaky(quick: ServerProcess) -> str:
    return quick.deploy("tests/apps/flaky.py::Flaky")


@pytest.fixture
def client(quick: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(quick.address) as c:
        yield c


def attempts(marks: Path, key: str) -> list[str]:
    """The runner of each attempt of `key`, in order."""
    files = sorted(marks.glob(f"{key}.*"), key=lambda p: int(p.name.split(".")[1]))
    return [p.name.split(".", 2)[2] for p in files]


def test_a_request_whose_runner_dies_is_retried_on_another_runner(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    handle = client.submit(flaky, {"key": "crash", "marks": str(tmp_path), "crash_first": True})
    statuses = list(client.watch(handle.request_id))
    final = statuses[-1]
    assert isinstance(final, Completed) and final.output["attempt"] == 2
    runners = attempts(tmp_path, "crash")
    assert len(runners) == 2 and runners[0] != runners[1]
    kinds = [type(s) for s in statuses]
    back = kinds.index(InProgress)
    assert Queued in kinds[back:], "the watcher saw the request go back to the queue"


def test_no_retry_ends_with_the_runner_error(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    with pytest.raises(errors.RunnerDisconnectedError):
        client.subscribe(flaky, {"key": "once", "marks": str(tmp_path), "crash_first": True},
                         no_retry=True)
    assert len(attempts(tmp_path, "once")) == 1


def test_request_timeout_replaces_the_runner_and_retries(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    out = client.subscribe(flaky, {"key": "slow", "marks": str(tmp_path), "hang_first_s": 60})
    assert out["attempt"] == 2
    runners = attempts(tmp_path, "slow")
    assert runners[0] != runners[1]
    with pytest.raises(errors.RequestTimeoutError):
        client.subscribe(flaky, {"key": "slow2", "marks": str(tmp_path), "hang_first_s": 60},
                         retry_config={"timeout": 0})
    assert len(attempts(tmp_path, "slow2")) == 1


def test_a_handler_may_ask_for_a_retry_or_forbid_one(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    marks = str(tmp_path)
    assert client.subscribe(flaky, {"key": "ask", "marks": marks, "verdict": "retry"}) == {
        "attempt": 2, "runner": attempts(tmp_path, "ask")[1]}
    with pytest.raises(errors.RunnerServerError):
        client.subscribe(flaky, {"key": "never", "marks": marks, "verdict": "never"})
    with pytest.raises(errors.RunnerServerError):
        client.subscribe(flaky, {"key": "plain", "marks": marks, "fail": True})
    assert len(attempts(tmp_path, "never")) == len(attempts(tmp_path, "plain")) == 1


def test_no_request_gets_more_than_ten_attempts(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    with pytest.raises(errors.RunnerServerError):
        client.subscribe(flaky, {"key": "ten", "marks": str(tmp_path), "fail": True,
                                 "verdict": "retry"})
    assert len(attempts(tmp_path, "ten")) == 10


def test_a_handler_may_ask_for_its_runner_to_be_replaced(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    marks = str(tmp_path)
    first = client.subscribe(flaky, {"key": "stop", "marks": marks, "stop_runner": True})
    later = [client.subscribe(flaky, {"key": f"after{i}", "marks": marks})["runner"]
             for i in range(3)]
    assert first["runner"] not in later


def test_a_start_timeout_ends_a_request_that_cannot_start(
    quick: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    gate = make_gate(tmp_path / "never")
    app_file = tmp_path / "app" / "blocked.py"
    app_file.parent.mkdir()
    app_file.write_text(BLOCKED.format(gate=str(gate)))
    endpoint = quick.deploy(f"{app_file}::Blocked")
    handle = client.submit(endpoint, {"x": 1}, start_timeout=1.0)
    final = client.wait(handle.request_id, timeout=30)
    assert final.error is not None and final.error.error_type == "request_timeout"
    assert "start_timeout" in final.error.message


def test_max_queue_length_refuses_when_the_queue_is_longer(
    client: SyncClient, tmp_path: Path, quick: ServerProcess
) -> None:
    gate = make_gate(tmp_path / "held")
    app_file = tmp_path / "app" / "held.py"
    app_file.parent.mkdir()
    app_file.write_text(BLOCKED.format(gate=str(gate)).replace("Blocked", "Held").replace(
        '"blocked"', '"held"'))
    endpoint = quick.deploy(f"{app_file}::Held")
    queued = [client.submit(endpoint, {"x": i}, max_queue_length=1) for i in range(2)]
    with pytest.raises(errors.ResourceExhaustedError):
        client.submit(endpoint, {"x": 3}, max_queue_length=1)
    assert client.submit(endpoint, {"x": 4}).request_id  # no limit asked: stored
    size = json.loads(quick.cli("queue", "size", "held", "--output", "json").stdout)
    assert size == {"app": "held", "size": 3}
    assert "flushed 3" in quick.cli("queue", "flush", "held").stdout
    assert json.loads(quick.cli("queue", "size", "held", "--output", "json").stdout)["size"] == 0
    final = client.wait(queued[0].request_id, timeout=30)
    assert final.error is not None and final.error.error_type == "client_cancelled"


def test_the_same_idempotency_key_returns_the_same_request(
    client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    body = {"key": "idem", "marks": str(tmp_path)}
    first = client.submit(flaky, body, idempotency_key="order-42")
    again = client.submit(flaky, body, idempotency_key="order-42")
    other = client.submit(flaky, body | {"key": "idem2"}, idempotency_key="order-43")
    assert again.request_id == first.request_id != other.request_id
    assert client.wait(first.request_id, timeout=30).output["attempt"] == 1
    assert len(attempts(tmp_path, "idem")) == 1


BLOCKED = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    x: int

class Blocked(falrt.App):
    app_name = "blocked"

    def setup(self) -> None:
        with open({gate!r}, "rb") as gate:  # held: no runner of this app ever gets ready
            gate.read(1)

    @falrt.endpoint("/")
    def run(self, request: Input) -> Input:
        return request
'''


def test_a_completed_request_is_posted_to_its_webhook_signed(
    quick: ServerProcess, client: SyncClient, flaky: str, tmp_path: Path
) -> None:
    from falrt.server.webhooks import verify
    from falrt.v1 import control_pb2, control_pb2_grpc
    from tests.test_webhooks import Receiver

    receiver = Receiver()
    try:
        handle = client.submit(flaky, {"key": "hook", "marks": str(tmp_path)},
                               webhook_url=receiver.url)
        (delivery,) = receiver.wait_for(1, timeout=30)
    finally:
        receiver.close()
    body = json.loads(delivery.body)
    assert body["request_id"] == handle.request_id and body["status"] == "OK"
    assert body["payload"]["attempt"] == 1
    with connection.channel(quick.address) as channel:
        keys = control_pb2_grpc.ControlStub(channel).GetWebhookKeys(
            control_pb2.GetWebhookKeysRequest()).keys
    verify(keys[0].x, delivery.headers, delivery.body, now=time.time())
    with pytest.raises(errors.InvalidArgumentError):
        client.submit(flaky, {"key": "x", "marks": str(tmp_path)}, webhook_url="file:///etc")


def test_results_are_deleted_after_the_retention_time(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--result-retention", "1"]).start()
    try:
        endpoint = server.deploy("examples/hello.py::Hello")
        with SyncClient(server.address) as client:
            handle = client.submit(endpoint, {"name": "short-lived"})
            assert client.wait(handle.request_id, timeout=30).output is not None

            def gone() -> bool:
                try:
                    client.status(handle.request_id)
                except errors.NotFoundError:
                    return True
                return False

            wait_for(gone, timeout=30, what="the result to expire")
    finally:
        server.stop()


def test_the_cli_passes_queue_options(quick: ServerProcess, flaky: str, tmp_path: Path) -> None:
    body = json.dumps({"key": "cli", "marks": str(tmp_path), "crash_first": True})
    failed = quick.cli("call", flaky, "--data", body, "--no-retry", "--priority", "low",
                       check=False)
    assert failed.returncode != 0 and "runner_disconnected" in failed.stderr
    again = json.dumps({"key": "cli2", "marks": str(tmp_path)})
    first = quick.cli("call", flaky, "--data", again, "--idempotency-key", "cli-key")
    second = quick.cli("call", flaky, "--data", again, "--idempotency-key", "cli-key")
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert len(attempts(tmp_path, "cli2")) == 1


@pytest.mark.parametrize("path", ["/async", "/sync"])
def test_a_running_request_is_cancelled_and_its_runner_keeps_serving(
    quick: ServerProcess, client: SyncClient, path: str
) -> None:
    endpoint = quick.deploy("tests/apps/waiter.py::Waiter")
    handle = client.submit(endpoint, {"text": "forever", "wait": True}, path=path)
    wait_for(lambda: isinstance(client.status(handle.request_id), InProgress),
             what="the request running")
    assert client.cancel(handle.request_id) == "CANCELLATION_REQUESTED"
    final = client.wait(handle.request_id, timeout=30)
    assert final.error is not None and final.error.error_type == "client_cancelled"
    after = client.subscribe(endpoint, {"text": "next"}, path=path)
    runners = json.loads(quick.cli("runners", "list", "--app", "waiter", "--output",
                                   "json").stdout)
    assert [r["runner_id"] for r in runners] == [after["runner"]]  # the same, still serving


def test_low_priority_waits_while_normal_requests_are_queued(
    quick: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    endpoint = quick.deploy("tests/apps/gated.py::Gated")
    gate = make_gate(tmp_path / "gate")
    holder = client.submit(endpoint, {"text": "holder", "gate": str(gate)})
    wait_for(lambda: isinstance(client.status(holder.request_id), InProgress),
             what="the slot taken")
    low = client.submit(endpoint, {"text": "low"}, priority="low")
    normal = [client.submit(endpoint, {"text": f"n{i}"}) for i in range(2)]
    assert [client.status(h.request_id) for h in (*normal, low)] == [
        Queued(position=0), Queued(position=1), Queued(position=2)]
    release(gate)
    assert [client.wait(h.request_id, timeout=30).output["text"] for h in (*normal, low)] == [
        "n0", "n1", "low"]


def test_a_webhook_owed_when_the_server_crashed_is_sent_after_the_restart(
    tmp_path: Path,
) -> None:
    from tests.test_webhooks import Receiver

    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nobody listens yet: the first delivery attempt fails
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "first.log", extra=LOCAL_WEBHOOKS).start()
    try:
        endpoint = first.deploy("examples/hello.py::Hello")
        with SyncClient(first.address) as client:
            handle = client.submit(endpoint, {"name": "owed"}, webhook_url=url)
            client.wait(handle.request_id, timeout=30)
        wait_for(lambda: "webhook for" in first.log(), what="a failed delivery in the log")
    finally:
        first.kill()  # the retry (15 s later) never happens in this process
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    receiver = Receiver(port=port)
    second = ServerProcess(data_dir, tmp_path / "second.log", extra=LOCAL_WEBHOOKS).start()
    try:
        (delivery,) = receiver.wait_for(1, timeout=30)
        assert json.loads(delivery.body)["request_id"] == handle.request_id
    finally:
        receiver.close()
        second.stop()


PARKED = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    n: int

class Parked(falrt.App):
    app_name = "parked"
    max_concurrency = 0  # no runner ever starts: requests stay queued

    @falrt.endpoint("/")
    def run(self, request: Input) -> Input:
        return request
'''


def test_positions_stay_exact_under_concurrent_submits(
    quick: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    app_file = tmp_path / "app" / "parked.py"
    app_file.parent.mkdir()
    app_file.write_text(PARKED)
    endpoint = quick.deploy(f"{app_file}::Parked")
    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(lambda n: client.submit(endpoint, {"n": n}), range(64)))
    assert sorted(h.queue_position for h in handles) == list(range(64))
    positions = {h.request_id: client.status(h.request_id) for h in handles}
    assert sorted(s.position for s in positions.values() if isinstance(s, Queued)) == list(
        range(64))
    by_answer = sorted(handles, key=lambda h: h.queue_position)
    assert [positions[h.request_id] for h in by_answer] == [
        Queued(position=p) for p in range(64)]  # stored order is answer order
    quick.cli("queue", "flush", "parked")


def test_a_client_timeout_cancels_the_request(
    quick: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    app_file = tmp_path / "app" / "parked.py"
    app_file.parent.mkdir()
    app_file.write_text(PARKED)
    endpoint = quick.deploy(f"{app_file}::Parked")
    seen: list[str] = []
    with pytest.raises(errors.RequestTimeoutError):
        client.subscribe(endpoint, {"n": 1}, client_timeout=0.5, on_enqueue=seen.append)
    final = client.wait(seen[0], timeout=30)
    assert final.error is not None
    assert final.error.error_type in ("client_cancelled", "request_timeout")


SKIPPING = '''
import os, signal
import msgspec
import falrt

class Input(msgspec.Struct):
    marks: str

class Skipping(falrt.App):
    app_name = "skipping"
    skip_retry_conditions = ["connection_error"]

    @falrt.endpoint("/")
    def run(self, request: Input) -> Input:
        open(os.path.join(request.marks, str(len(os.listdir(request.marks)))), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # every attempt loses its runner
        return request
'''


def test_an_app_may_skip_retries_for_a_condition(
    quick: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    app_file = tmp_path / "app" / "skipping.py"
    app_file.parent.mkdir()
    app_file.write_text(SKIPPING)
    marks = tmp_path / "marks"
    marks.mkdir()
    endpoint = quick.deploy(f"{app_file}::Skipping")
    with pytest.raises(errors.RunnerDisconnectedError):
        client.subscribe(endpoint, {"marks": str(marks)})
    assert len(list(marks.iterdir())) == 1
