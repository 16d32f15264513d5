"""End to end: a real server, real runner subprocesses, the real CLI and client."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest

from falrt import errors
from falrt.client import Completed, InProgress, Queued, SyncClient, connection
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> SyncClient:
    return SyncClient(server.address)


@pytest.fixture(scope="module")
def hello(server: ServerProcess) -> str:
    return server.deploy("examples/hello.py::Hello")


@pytest.fixture(scope="module")
def gated(server: ServerProcess) -> str:
    return server.deploy("tests/apps/gated.py::Gated")


def test_deploy_prints_the_endpoint_id(hello: str) -> None:
    assert hello == "local/hello"


def test_tables_show_ids_whole_even_on_a_narrow_output(server: ServerProcess, hello: str) -> None:
    (app,) = [a for a in json.loads(server.cli("apps", "list", "--output", "json").stdout)
              if a["endpoint_id"] == hello]
    table = server.cli("apps", "list").stdout  # a pipe: an 80-column console
    assert app["revision_id"] in table and hello in table and "…" not in table, table


def test_queue_path_returns_the_output(client: SyncClient, hello: str) -> None:
    assert client.subscribe(hello, {"name": "queue"}) == {"greeting": "Hello, queue!"}


def test_subscribe_stores_first_then_streams_to_completed(
    server: ServerProcess, client: SyncClient, hello: str
) -> None:
    """Queue.Subscribe, as any gRPC client calls it: the first message names the stored
    request; the last is COMPLETED with the output; the request stays readable by id."""
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        submit = queue_pb2.SubmitRequest(
            endpoint_id=hello, input=common_pb2.Payload(data=b'{"name": "one call"}'))
        states = [r.state for r in stub.Subscribe(queue_pb2.SubscribeRequest(submit=submit))]
    request_id = states[0].request_id
    assert request_id and all(s.request_id == request_id for s in states)
    assert states[-1].status == common_pb2.REQUEST_STATUS_COMPLETED
    assert json.loads(states[-1].output.data) == {"greeting": "Hello, one call!"}
    assert client.result(request_id) == {"greeting": "Hello, one call!"}


def test_direct_path_returns_the_output(client: SyncClient, hello: str) -> None:
    assert client.run(hello, {"name": "direct"}) == {"greeting": "Hello, direct!"}


def test_stream_yields_each_partial_output(server: ServerProcess, client: SyncClient) -> None:
    endpoint = server.deploy("examples/stream.py::Tokens")
    parts = list(client.stream(endpoint, {"sentence": "one two three", "delay_s": 0}))
    assert [p["token"] for p in parts] == ["one", "two", "three"]
    assert parts[-1]["text_so_far"] == "one two three"


def test_a_streaming_endpoint_through_the_queue_shows_each_partial_to_watchers(
    server: ServerProcess, client: SyncClient
) -> None:
    endpoint = server.deploy("examples/stream.py::Tokens")
    updates: list[object] = []
    output = client.subscribe(endpoint, {"sentence": "one two three", "delay_s": 0.2},
                              on_queue_update=updates.append)
    partials = [p for u in updates if isinstance(u, InProgress) for p in u.partials]
    assert [p["token"] for p in partials] == ["one", "two", "three"]
    # They came as the handler made them: in more than one update, before COMPLETED.
    assert len([u for u in updates if isinstance(u, InProgress) and u.partials]) > 1
    assert isinstance(updates[-1], Completed) and output == partials[-1]


def test_cli_stream_prints_one_json_line_per_partial(server: ServerProcess) -> None:
    endpoint = server.deploy("examples/stream.py::Tokens")
    out = server.cli("call", endpoint, "--stream", "--data",
                     '{"sentence": "a b", "delay_s": 0}').stdout
    assert [json.loads(line)["token"] for line in out.splitlines()] == ["a", "b"]


def test_handler_logs_reach_the_watcher(client: SyncClient, hello: str) -> None:
    handle = client.submit(hello, {"name": "logs"})
    updates = list(client.watch(handle.request_id, with_logs=True))
    final = updates[-1]
    assert isinstance(final, Completed)
    messages = [line.message for u in updates if isinstance(u, InProgress | Completed)
                for line in u.logs]
    assert any(m.startswith("greeting logs") for m in messages), messages


def test_cli_call_prints_output_and_logs(server: ServerProcess, hello: str) -> None:
    result = server.cli("call", hello, "--data", '{"name": "cli"}')
    assert json.loads(result.stdout) == {"greeting": "Hello, cli!"}
    assert "greeting cli" in result.stderr


def test_validation_error_is_invalid_argument_naming_the_field(
    server: ServerProcess, client: SyncClient, hello: str
) -> None:
    with pytest.raises(errors.ValidationFailedError) as queued:
        client.subscribe(hello, {"name": 5})
    assert queued.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [loc for loc, _ in queued.value.field_errors] == ["$.name"]
    with pytest.raises(errors.ValidationFailedError) as direct:
        client.run(hello, {})
    assert [loc for loc, _ in direct.value.field_errors] == ["$.name"]
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Run(queue_pb2.RunRequest(
                endpoint_id=hello, input=common_pb2.Payload(data=b'{"name": []}')))
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "$.name" in raw.value.details()


def test_unknown_endpoint_id_is_not_found(server: ServerProcess, client: SyncClient) -> None:
    with pytest.raises(errors.NotFoundError):
        client.submit("local/no-such-app", {})
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Submit(queue_pb2.SubmitRequest(endpoint_id="local/no-such-app"))
    assert raw.value.code() is grpc.StatusCode.NOT_FOUND
    assert dict(raw.value.trailing_metadata())["falrt-error-type"] == "not_found"
    result = server.cli("call", "local/no-such-app", "--data", "{}", check=False)
    assert result.returncode != 0
    assert "no-such-app" in result.stderr


def test_handler_exception_completes_with_error_and_runner_keeps_serving(
    client: SyncClient, gated: str
) -> None:
    with pytest.raises(errors.RunnerServerError) as failed:
        client.subscribe(gated, {"text": "bad", "fail": True})
    assert "failing on purpose for bad" in str(failed.value)
    status = client.status(client.submit(gated, {"text": "x", "fail": True}).request_id)
    assert isinstance(status, Queued | InProgress | Completed)
    after = client.subscribe(gated, {"text": "good"})
    first = client.subscribe(gated, {"text": "again"})
    assert after["text"] == "good"
    assert after["runner"] == first["runner"]  # max_concurrency 1: the same runner served all


def test_queue_positions_count_the_requests_ahead(
    client: SyncClient, gated: str, tmp_path: Path
) -> None:
    gates = [make_gate(tmp_path / f"gate{i}") for i in range(5)]
    handles = [client.submit(gated, {"text": f"r{i}", "gate": str(g)})
               for i, g in enumerate(gates)]
    ids = [h.request_id for h in handles]
    wait_for(lambda: isinstance(client.status(ids[0]), InProgress), what="r0 in progress")
    seen: list[object] = []
    watcher = threading.Thread(target=lambda: seen.extend(client.watch(ids[4])))
    watcher.start()
    assert [client.status(i) for i in ids[1:]] == [Queued(position=p) for p in range(4)]
    for done, gate in enumerate(gates):
        release(gate)
        assert client.wait(ids[done], timeout=60).output["text"] == f"r{done}"
        if done < 4:
            wait_for(lambda d=done: isinstance(client.status(ids[d + 1]), InProgress),
                     what="next request in progress")
            rest = [client.status(i) for i in ids[done + 2:]]
            assert rest == [Queued(position=p) for p in range(len(rest))]
    watcher.join(timeout=30)
    positions = [s.position for s in seen if isinstance(s, Queued)]
    assert positions == [3, 2, 1, 0]
    assert isinstance(seen[-1], Completed)


def test_runners_and_apps_are_listed(server: ServerProcess, hello: str, gated: str) -> None:
    apps = json.loads(server.cli("apps", "list", "--output", "json").stdout)
    names = {app["name"] for app in apps}
    assert {"hello", "gated"} <= names
    runners = json.loads(server.cli("runners", "list", "--output", "json").stdout)
    assert any(r["app_name"] == "gated" for r in runners)


def test_the_host_can_follow_the_subcommand(server: ServerProcess, hello: str) -> None:
    """`falrt deploy FILE --host H`, `falrt apps list --host H`: as people type them."""
    deployed = server.cli("deploy", "examples/hello.py::Hello", "--app-name", "hello-host-last",
                          host_last=True)
    assert deployed.stdout.strip().splitlines()[-1] == "local/hello-host-last"
    apps = json.loads(server.cli("apps", "list", "--output", "json", host_last=True).stdout)
    assert {"hello", "hello-host-last"} <= {app["name"] for app in apps}


def test_apps_get_shows_that_a_server_alone_on_its_store_leads_its_apps(
    server: ServerProcess, hello: str
) -> None:
    app = json.loads(server.cli("apps", "get", "hello", "--output", "json").stdout)
    own_id = (server.data_dir / "server-id").read_text().strip()
    assert app["scaling_lead"] == {"shared": False, "server_id": own_id, "this_server": True,
                                   "lease_until": None}
    shown = server.cli("apps", "get", "hello").stdout
    assert f"scaling lead: {own_id} (this server, alone on its store)" in shown
    listed = json.loads(server.cli("apps", "list", "--output", "json").stdout)
    assert all(a["scaling_lead"] is None for a in listed)  # (GetApp only: it reads the store)


def test_each_revision_records_its_endpoint_schemas(server: ServerProcess, hello: str) -> None:
    app = json.loads(server.cli("apps", "get", "hello", "--output", "json").stdout)
    (endpoint,) = app["endpoints"]
    assert endpoint["kind"] == "unary"
    schema = endpoint["input_schema"]  # a nested object, not JSON text
    assert isinstance(schema, dict) and "name" in json.dumps(schema)
    assert isinstance(endpoint["output_schema"], dict)
    assert isinstance(app["queue_size"], int) and isinstance(app["active_runners"], int)
    assert app["revision_id"].startswith("rev-")


def test_health_and_reflection_are_served(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with connection.channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "falrt.v1.Queue", "falrt.v1.Control"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(reflect.ServerReflectionInfo(iter([request])))
        names = {s.name for s in reply.list_services_response.service}
    assert {"falrt.v1.Queue", "falrt.v1.Control"} <= names
