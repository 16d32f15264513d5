"""fal's `private_logs`: a request's logs reach only keys of the app's owner; any other
caller allowed to read the request (a public app: anyone) gets it without logs, over gRPC
(GetStatus, Watch, Subscribe) and over HTTP (the status routes with `logs=1`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from falrt.client import SyncClient, credentials
from falrt.client.control import ControlClient
from falrt.client.status import Status
from falrt.v1 import queue_pb2, queue_pb2_grpc
from tests.harness import ServerProcess, stop_cleanly
from tests.https import HTTP_LISTENING

pytestmark = pytest.mark.e2e

APPS = '''
import msgspec
import falrt

class Text(msgspec.Struct):
    text: str

class Hidden(falrt.App, private_logs=True):
    app_name = "hidden"
    app_auth = "public"

    @falrt.endpoint("/")
    def echo(self, input: Text) -> Text:
        print("log of", input.text)
        return input

class Shown(falrt.App):
    app_name = "shown"
    app_auth = "public"

    @falrt.endpoint("/")
    def echo(self, input: Text) -> Text:
        print("log of", input.text)
        return input
'''


class World:
    """A server with `--http-listen`, the two apps, and keys: the owner's admin key, an API
    key of the owner, and an API key of another owner."""

    def __init__(self, server: ServerProcess, app_file: Path) -> None:
        self.server = server
        self.http = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
        admin = credentials.key_for(server.address)
        assert admin is not None
        with ControlClient(server.address, key=admin) as control:
            self.keys: dict[str, str | None] = {
                "admin": admin, "owner": control.create_key("API", "owner's").key,
                "stranger": control.create_key("API", "another's", owner="other").key,
                "nobody": None,
            }
        for app in ("Hidden", "Shown"):
            server.deploy(f"{app_file}::{app}")

    def submit(self, app: str, key: str, text: str) -> str:
        """Submits as `key` and waits until the request completes; its id."""
        with SyncClient(self.server.address, key=self.keys[key]) as client:
            handle = client.submit(f"local/{app}", {"text": text})
            assert handle.get() == {"text": text}
        return handle.request_id

    def grpc_logs(self, key: str, request_id: str) -> dict[str, list[str]]:
        """The log lines a caller gets over gRPC, by call (raw stubs: "nobody" sends no key,
        where a client would send the key recorded for the server)."""
        metadata = [("authorization", f"Key {self.keys[key]}")] if self.keys[key] else []
        with grpc.insecure_channel(self.server.address) as channel:
            queue = queue_pb2_grpc.QueueStub(channel)
            status = queue.GetStatus(queue_pb2.GetStatusRequest(
                request_id=request_id, with_logs=True), metadata=metadata, timeout=30)
            watched = [line.message for reply in queue.Watch(queue_pb2.WatchRequest(
                request_id=request_id, with_logs=True), metadata=metadata, timeout=30)
                for line in reply.state.logs]
        return {"GetStatus": [line.message for line in status.state.logs], "Watch": watched}

    def http_logs(self, key: str, app: str, request_id: str) -> dict[str, list[str]]:
        """The log lines a caller gets from the HTTP status routes with `logs=1`."""
        url = f"{self.http}/queue/local/{app}/requests/{request_id}/status"
        headers = {"Authorization": f"Key {self.keys[key]}"} if self.keys[key] else {}
        with httpx.Client(timeout=30, headers=headers) as http:
            status = http.get(url, params={"logs": "1"})
            assert status.status_code == 200, status.text
            streamed = [line["message"] for event in _events(http, url + "/stream?logs=1")
                        for line in event.get("logs") or ()]
        return {"HTTP status": [line["message"] for line in status.json()["logs"] or ()],
                "HTTP status/stream": streamed}


def _events(http: httpx.Client, url: str) -> Iterator[dict[str, object]]:
    with http.stream("GET", url) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: "):])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("private-logs")
    app_file = root / "apps.py"
    app_file.write_text(APPS)
    server = ServerProcess(root / "data", root / "server.log",
                           extra=["--http-listen", "127.0.0.1:0"]).start()
    try:
        yield World(server, app_file)
    finally:
        stop_cleanly(server)


@pytest.mark.parametrize(("app", "key", "sees"), [
    ("hidden", "owner", True), ("hidden", "admin", True),
    ("hidden", "stranger", False), ("hidden", "nobody", False),
    ("shown", "stranger", True), ("shown", "nobody", True),
])
def test_request_logs_of_a_private_logs_app_reach_only_its_owners_keys(
    world: World, app: str, key: str, sees: bool,
) -> None:
    request_id = world.submit(app, "stranger", f"{app} for {key}")
    expected = [f"log of {app} for {key}"] if sees else []
    got = {**world.grpc_logs(key, request_id), **world.http_logs(key, app, request_id)}
    assert got == dict.fromkeys(got, expected)


def test_subscribe_sends_logs_of_a_private_logs_app_to_its_owner_only(world: World) -> None:
    for key, expected in (("stranger", []), ("owner", ["log of mine"])):
        updates: list[Status] = []
        with SyncClient(world.server.address, key=world.keys[key]) as client:
            output = client.subscribe("local/hidden", {"text": "mine"}, with_logs=True,
                                      on_queue_update=updates.append)
        assert output == {"text": "mine"}
        assert [line.message for update in updates
                for line in getattr(update, "logs", ())] == expected, key
