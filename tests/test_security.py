"""The security matrix: each way in without the right key is refused with the right status.

Calls go through raw generated stubs with explicit metadata, as any gRPC client's would.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

import grpc
import pytest

from falrt.client import credentials
from falrt.client.control import ControlClient
from falrt.v1 import (
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    queue_pb2,
    queue_pb2_grpc,
    runner_pb2,
    runner_pb2_grpc,
)
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


class Keys:
    """The server's admin key and keys made for the matrix."""

    def __init__(self, server: ServerProcess) -> None:
        admin = credentials.key_for(server.address)
        assert admin is not None
        self.admin = admin
        with ControlClient(server.address) as control:
            self.api = control.create_key("API", "caller").key
            self.stranger = control.create_key("API", "someone else's", owner="other").key
            revoked = control.create_key("API", "revoked")
            control.revoke_key(revoked.info.key_id)
            self.revoked = revoked.key
        key_id = self.api.partition(":")[0]
        self.wrong_secret = f"{key_id}:not-the-secret"


@pytest.fixture(scope="module")
def keys(server: ServerProcess) -> Keys:
    return Keys(server)


@pytest.fixture(scope="module")
def apps(server: ServerProcess) -> dict[str, str]:
    """hello deployed three times: private (the default), shared and public."""
    return {auth: server.deploy("examples/hello.py::Hello", "--app-name", f"hello-{auth}",
                                "--auth", auth)
            for auth in ("private", "shared", "public")}


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as plain:  # no key unless a test sends one
        yield plain


def meta(key: str | None) -> list[tuple[str, str]]:
    return [] if key is None else [("authorization", f"Key {key}")]


def status_of(call: object) -> grpc.StatusCode:
    """The status a call ends with (OK when it succeeds)."""
    try:
        result = call() if callable(call) else call
        if hasattr(result, "__iter__") and not isinstance(result, bytes | str):
            list(result)  # type: ignore[call-overload]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def submit(channel: grpc.Channel, endpoint: str, key: str | None) -> grpc.StatusCode:
    stub = queue_pb2_grpc.QueueStub(channel)
    data = common_pb2.Payload(data=json.dumps({"name": "x"}).encode())
    return status_of(lambda: stub.Submit(
        queue_pb2.SubmitRequest(endpoint_id=endpoint, input=data), metadata=meta(key)))


def list_apps(channel: grpc.Channel, key: str | None) -> grpc.StatusCode:
    stub = control_pb2_grpc.ControlStub(channel)
    return status_of(lambda: stub.ListApps(control_pb2.ListAppsRequest(), metadata=meta(key)))


def test_the_control_plane_without_a_key_is_unauthenticated(channel: grpc.Channel) -> None:
    assert list_apps(channel, None) is UNAUTHENTICATED


def test_the_control_plane_with_an_api_key_is_permission_denied(
    channel: grpc.Channel, keys: Keys
) -> None:
    assert list_apps(channel, keys.api) is PERMISSION_DENIED
    stub = control_pb2_grpc.ControlStub(channel)
    create = control_pb2.CreateKeyRequest(scope="ADMIN")  # no escalation through CreateKey
    assert status_of(lambda: stub.CreateKey(create, metadata=meta(keys.api))) is PERMISSION_DENIED


def test_a_revoked_key_is_unauthenticated_everywhere(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    assert list_apps(channel, keys.revoked) is UNAUTHENTICATED
    assert submit(channel, apps["public"], keys.revoked) is UNAUTHENTICATED


def test_a_wrong_secret_or_a_malformed_header_is_unauthenticated(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    assert submit(channel, apps["private"], keys.wrong_secret) is UNAUTHENTICATED
    stub = queue_pb2_grpc.QueueStub(channel)
    for header in ("Bearer abc", "Key nocolon", keys.api):
        code = status_of(lambda h=header: stub.Submit(  # type: ignore[misc]
            queue_pb2.SubmitRequest(endpoint_id=apps["private"]),
            metadata=[("authorization", h)]))
        assert code is UNAUTHENTICATED, header


def test_a_private_app_takes_only_keys_of_its_owner(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    assert submit(channel, apps["private"], None) is UNAUTHENTICATED
    assert submit(channel, apps["private"], keys.stranger) is PERMISSION_DENIED
    assert submit(channel, apps["private"], keys.api) is grpc.StatusCode.OK
    assert submit(channel, apps["private"], keys.admin) is grpc.StatusCode.OK


def test_subscribe_follows_the_app_auth_too(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    stub = queue_pb2_grpc.QueueStub(channel)
    request = queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
        endpoint_id=apps["private"], input=common_pb2.Payload(data=b'{"name": "x"}')))
    for key, expected in ((None, UNAUTHENTICATED), (keys.stranger, PERMISSION_DENIED),
                          (keys.api, grpc.StatusCode.OK)):
        assert status_of(lambda k=key: stub.Subscribe(request, metadata=meta(k))) is expected


def test_realtime_sessions_follow_the_app_auth(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    stub = queue_pb2_grpc.QueueStub(channel)
    opening = queue_pb2.RealtimeRequest(open=queue_pb2.RealtimeOpen(
        endpoint_id=apps["private"], path="/"))
    expected = ((None, UNAUTHENTICATED), (keys.stranger, PERMISSION_DENIED),
                (keys.api, grpc.StatusCode.INVALID_ARGUMENT))  # allowed in: hello is not realtime
    for key, status in expected:
        code = status_of(lambda k=key: stub.Realtime(iter([opening]), metadata=meta(k)))
        assert code is status, key


def test_a_request_of_a_private_app_is_hidden_from_other_owners(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    stub = queue_pb2_grpc.QueueStub(channel)
    submitted = stub.Submit(queue_pb2.SubmitRequest(
        endpoint_id=apps["private"], input=common_pb2.Payload(data=b'{"name": "x"}')),
        metadata=meta(keys.api))
    rid = submitted.request_id
    for key, expected in ((None, UNAUTHENTICATED), (keys.stranger, PERMISSION_DENIED)):
        calls = [
            lambda k=key: stub.GetStatus(queue_pb2.GetStatusRequest(request_id=rid),
                                         metadata=meta(k)),
            lambda k=key: stub.Watch(queue_pb2.WatchRequest(request_id=rid), metadata=meta(k)),
            lambda k=key: stub.Cancel(queue_pb2.CancelRequest(request_id=rid), metadata=meta(k)),
            lambda k=key: stub.GetResult(queue_pb2.GetResultRequest(request_id=rid),
                                         metadata=meta(k)),
        ]
        assert [status_of(call) for call in calls] == [expected] * 4


def test_a_deleted_private_apps_requests_stay_hidden_from_callers_without_its_key(
    channel: grpc.Channel, keys: Keys, server: ServerProcess
) -> None:
    endpoint = server.deploy("examples/hello.py::Hello", "--app-name", "doomed")
    stub = queue_pb2_grpc.QueueStub(channel)
    rid = stub.Submit(queue_pb2.SubmitRequest(
        endpoint_id=endpoint, input=common_pb2.Payload(data=b'{"name": "x"}')),
        metadata=meta(keys.api)).request_id
    with ControlClient(server.address) as control:
        control.delete_app("doomed")
    calls = [
        lambda k: stub.GetStatus(queue_pb2.GetStatusRequest(request_id=rid, with_logs=True),
                                 metadata=meta(k)),
        lambda k: stub.Watch(queue_pb2.WatchRequest(request_id=rid), metadata=meta(k)),
        lambda k: stub.GetResult(queue_pb2.GetResultRequest(request_id=rid), metadata=meta(k)),
        lambda k: stub.Cancel(queue_pb2.CancelRequest(request_id=rid), metadata=meta(k)),
    ]
    for key, expected in ((None, UNAUTHENTICATED), (keys.stranger, PERMISSION_DENIED)):
        assert [status_of(lambda c=call, k=key: c(k)) for call in calls] == [expected] * 4, key
    # its owner still reads it: the request is answered (not found as gone, or its status)
    assert status_of(lambda: calls[0](keys.api)) is grpc.StatusCode.OK


def test_an_enormous_id_is_not_found_and_the_error_quotes_only_its_start(
    channel: grpc.Channel, keys: Keys
) -> None:
    stub = queue_pb2_grpc.QueueStub(channel)
    huge = "local/" + "x" * 10_000
    calls = [
        lambda: stub.Submit(queue_pb2.SubmitRequest(endpoint_id=huge), metadata=meta(keys.api)),
        lambda: stub.GetStatus(queue_pb2.GetStatusRequest(request_id=huge),
                               metadata=meta(keys.api)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        assert "(10006 characters)" in refused.value.details()
        assert len(refused.value.details()) < 300


def test_a_priority_or_duration_outside_the_contract_is_invalid_and_the_server_serves_on(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    from google.protobuf.duration_pb2 import Duration

    stub = queue_pb2_grpc.QueueStub(channel)
    data = common_pb2.Payload(data=b'{"name": "x"}')
    bad = [queue_pb2.SubmitRequest(endpoint_id=apps["public"], input=data, priority=7),  # type: ignore[arg-type]
           queue_pb2.SubmitRequest(endpoint_id=apps["public"], input=data,
                                   start_timeout=Duration(seconds=10**15))]
    for request in bad:
        code = status_of(lambda r=request: stub.Submit(r, metadata=meta(keys.api)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, request
    assert submit(channel, apps["public"], keys.api) is grpc.StatusCode.OK


@pytest.mark.parametrize("settings", [
    {"keep_alive_s": float("nan")}, {"request_timeout_s": float("inf")},
    {"startup_timeout_s": 1e300}, {"scaling_delay_s": -1.0},
    {"concurrency_buffer_perc": float("nan")},
], ids=lambda s: next(iter(s)))
def test_app_settings_outside_their_range_are_invalid_and_the_app_keeps_its_own(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str], settings: dict[str, float]
) -> None:
    stub = control_pb2_grpc.ControlStub(channel)
    name = apps["public"].partition("/")[2]
    request = control_pb2.ScaleAppRequest(
        app_name=name, settings=control_pb2.AppSettings(**settings))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ScaleApp(request, metadata=meta(keys.admin))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert next(iter(settings)) in refused.value.details()
    shown = stub.GetApp(control_pb2.GetAppRequest(name=name), metadata=meta(keys.admin)).app
    assert not shown.scale_overrides.HasField(next(iter(settings)))  # type: ignore[arg-type]
    assert submit(channel, apps["public"], keys.api) is grpc.StatusCode.OK


def test_shared_apps_take_any_valid_key_and_public_apps_take_none(
    channel: grpc.Channel, keys: Keys, apps: dict[str, str]
) -> None:
    assert submit(channel, apps["shared"], None) is UNAUTHENTICATED
    assert submit(channel, apps["shared"], keys.stranger) is grpc.StatusCode.OK
    assert submit(channel, apps["public"], None) is grpc.StatusCode.OK


def test_a_forged_runner_token_is_refused(channel: grpc.Channel, server: ServerProcess) -> None:
    with ControlClient(server.address) as control:
        runner_id = control.list_runners()[0].runner_id  # a real, attached runner
    stub = runner_pb2_grpc.RunnerLinkStub(channel)
    for forged in (runner_id, "r-000000000000"):
        hello = runner_pb2.RunnerMessage(hello=runner_pb2.Hello(
            runner_id=forged, token="forged-token", slots=8))
        assert status_of(lambda h=hello: stub.Attach(iter([h]))) is PERMISSION_DENIED


def test_keys_are_stored_hashed_and_the_admin_key_file_is_private(
    server: ServerProcess, keys: Keys
) -> None:
    secret = keys.api.partition(":")[2]
    for path in server.data_dir.rglob("*"):
        if path.is_file() and path.name != "admin.key":
            assert secret.encode() not in path.read_bytes(), path
    for path in (server.data_dir / "admin.key", credentials.credentials_path()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    listed = server.cli("keys", "list", "--output", "json").stdout
    assert secret not in listed and keys.admin.partition(":")[2] not in listed
    assert {k["scope"] for k in json.loads(listed)} == {"ADMIN", "API"}
    assert secret not in server.log()
