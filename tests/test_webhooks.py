"""Webhooks: fal's payload and signature, delivery with retries, the served key.

Deliveries go over real HTTP to a real receiver (http.server on 127.0.0.1, port 0, in a
thread); the key is read back from a real server subprocess through Control.GetWebhookKeys.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
import uvloop

from falrt import errors
from falrt.client import connection
from falrt.files import refs
from falrt.server.queue.webhooks import (
    KEY_FILE,
    PAYLOAD_NOT_JSON,
    DeliverySettings,
    SigningKey,
    WebhookSender,
    backoff_s,
    check_webhook_url,
    verify,
    webhook_body,
)
from falrt.store.records import ErrorRecord, Outcome
from falrt.v1 import control_pb2, control_pb2_grpc
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

JSON_OUTPUT = Outcome(output=b'{"images": [1, 2],  "seed": 42}', content_type="application/json")
FAST = DeliverySettings(backoff_base_s=0.001, backoff_cap_s=0.002)


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A real HTTP server that records each POST. The first `fail_first` get a 500; the first
    `hang_first` get no answer until `release` is set (or 10 s pass)."""

    def __init__(self, fail_first: int = 0, hang_first: int = 0, port: int = 0) -> None:
        self.requests: list[Received] = []
        self.release = threading.Event()
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = Received(dict(self.headers.items()), body, time.monotonic())
                count = receiver._record(request)
                if count <= hang_first:
                    receiver.release.wait(10)
                self.send_response(500 if count <= fail_first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def _record(self, request: Received) -> int:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            return len(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} webhooks arrived")
            return list(self.requests)

    async def received(self, count: int, timeout: float = 10.0) -> list[Received]:
        return await asyncio.to_thread(self.wait_for, count, timeout)

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / KEY_FILE)


@asynccontextmanager
async def sending(
    key: SigningKey, settings: DeliverySettings = FAST
) -> AsyncIterator[WebhookSender]:
    """A sender that is closed at the end; checks that it left no task behind. The test's
    receivers listen on this machine: the sender is told it may reach loopback (the address
    policy refuses it unless told)."""
    sender = WebhookSender(key, "alice", msgspec.structs.replace(
        settings, allowed_networks=("127.0.0.0/8", "::1/128")))
    try:
        yield sender
    finally:
        await asyncio.wait_for(sender.close(), 5)
        assert sender.stats().pending == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Runs the scenario on uvloop, as the server does, within 30 s."""

    async def bounded() -> None:
        async with asyncio.timeout(30):
            await scenario()

    uvloop.run(bounded())


def dead_url() -> str:
    """A URL on which nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://user:hunter2@127.0.0.1:{port}/hook?token=SECRET"


def test_a_delivery_is_signed_by_the_key_kept_in_the_data_dir(
    tmp_path: Path, key: SigningKey, receiver: Receiver
) -> None:
    async def scenario() -> None:
        async with sending(key) as sender:
            assert sender.submit(receiver.url, "req-1", JSON_OUTPUT)
            (got,) = await receiver.received(1)
            await sender.join()
            assert sender.stats().delivered == 1
        reloaded = SigningKey.load_or_create(tmp_path / KEY_FILE)
        assert (reloaded.x, reloaded.kid) == (key.x, key.kid)
        assert verify(reloaded.x, got.headers, got.body, now=time.time())
        assert got.headers["X-Fal-Webhook-Request-Id"] == "req-1"
        assert got.headers["X-Fal-Webhook-User-Id"] == "alice"
        assert abs(int(got.headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 60
        assert got.headers["Content-Type"] == "application/json"

    run(scenario)
    assert os.stat(tmp_path / KEY_FILE).st_mode & 0o777 == 0o600


def test_a_delivery_keeps_the_urls_credentials_and_host_though_sent_to_the_checked_address(
    key: SigningKey, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://user:pw@localhost:{port}/hook?token=t"

    async def scenario() -> None:
        async with sending(key) as sender:
            assert sender.submit(url, "req-1", JSON_OUTPUT)
            (got,) = await receiver.received(1)
        assert got.headers["Authorization"] == "Basic dXNlcjpwdw=="  # user:pw
        assert got.headers["Host"] == f"localhost:{port}"

    run(scenario)


def test_an_ok_payload_embeds_the_json_output_byte_for_byte() -> None:
    body = webhook_body("req-1", JSON_OUTPUT)
    assert JSON_OUTPUT.output in body
    assert json.loads(body) == {
        "request_id": "req-1", "gateway_request_id": "req-1", "status": "OK",
        "payload": {"images": [1, 2], "seed": 42},
    }
    retried = json.loads(webhook_body("req-1", JSON_OUTPUT, "req-1b"))
    assert retried["gateway_request_id"] == "req-1b"


@pytest.mark.parametrize("outcome", [
    Outcome(output=msgspec.msgpack.encode({"a": 1}), content_type="application/msgpack"),
    Outcome(output=b'{"a": ', content_type="application/json"),
    Outcome(output=b"", content_type="application/json"),
])
def test_output_that_is_not_json_gives_a_null_payload_and_a_payload_error(
    outcome: Outcome,
) -> None:
    assert json.loads(webhook_body("req-1", outcome)) == {
        "request_id": "req-1", "gateway_request_id": "req-1", "status": "OK",
        "payload": None, "payload_error": PAYLOAD_NOT_JSON,
    }


def test_an_output_kept_by_reference_is_sent_as_its_url() -> None:
    """Too large for a webhook's body (docs/files.md, "Payloads by reference")."""
    ref = refs.PayloadRef("ab" * 16, 70 * 1024 * 1024, "http://h/files/abab?signature=s")
    outcome = Outcome(output=refs.pack(ref), content_type=refs.marked("application/json"))
    body = json.loads(webhook_body("req-1", outcome))
    assert (body["status"], body["payload"], body["payload_url"]) == ("OK", None, ref.url)
    assert f"{70 * 1024 * 1024} bytes" in body["payload_error"]


def test_an_error_payload_carries_the_message_and_error_type() -> None:
    failed = Outcome(error=ErrorRecord("request_timeout", "took longer than 10 s", 4))
    assert json.loads(webhook_body("req-1", failed)) == {
        "request_id": "req-1", "gateway_request_id": "req-1", "status": "ERROR",
        "error": "took longer than 10 s", "error_type": "request_timeout",
        "payload": {"detail": "took longer than 10 s", "error_type": "request_timeout"},
    }
    invalid = Outcome(error=ErrorRecord(
        "bad_request", "input failed validation", 3, field_errors=(("$.prompt", "required"),)))
    assert json.loads(webhook_body("req-2", invalid))["payload"] == {
        "detail": [{"loc": "$.prompt", "msg": "required"}], "error_type": "bad_request",
    }


def test_a_tampered_body_a_stale_timestamp_or_another_key_fails_verification(
    tmp_path: Path, key: SigningKey,
) -> None:
    body = webhook_body("req-1", JSON_OUTPUT)
    now = 1_700_000_000.0
    headers = key.sign_headers("req-1", "alice", body, now)
    assert verify(key.x, headers, body, now)
    assert verify(key.x, {k.lower(): v for k, v in headers.items()}, body, now + 300)
    assert not verify(key.x, headers, body.replace(b"42", b"43"), now)
    assert not verify(key.x, headers, body, now + 301)
    assert not verify(key.x, headers, body, now - 301)
    assert not verify(key.x, {**headers, "X-Fal-Webhook-User-Id": "mallory"}, body, now)
    assert not verify(key.x, {**headers, "X-Fal-Webhook-Signature": "zz"}, body, now)
    other = SigningKey.load_or_create(tmp_path / "other.pem")
    assert other.kid != key.kid
    assert not verify(other.x, headers, body, now)
    assert not verify("not-a-key", headers, body, now)
    del headers["X-Fal-Webhook-Timestamp"]
    assert not verify(key.x, headers, body, now)


def test_failed_deliveries_are_retried_with_growing_backoff_until_one_succeeds(
    key: SigningKey,
) -> None:
    receiver = Receiver(fail_first=3)
    settings = DeliverySettings(backoff_base_s=0.05, backoff_cap_s=0.1)

    async def scenario() -> None:
        async with sending(key, settings) as sender:
            sender.submit(receiver.url, "req-1", JSON_OUTPUT)
            await sender.join()
            assert sender.stats().delivered == 1
        got = receiver.wait_for(4)
        assert len(got) == 4
        assert {r.body for r in got} == {webhook_body("req-1", JSON_OUTPUT)}
        assert all(verify(key.x, r.headers, r.body, time.time()) for r in got)
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(got)]
        assert [round(g, 2) >= d for g, d in zip(gaps, [0.05, 0.1, 0.1], strict=True)] == [True] * 3

    try:
        run(scenario)
    finally:
        receiver.close()


def test_a_delivery_gives_up_after_ten_attempts(key: SigningKey) -> None:
    receiver = Receiver(fail_first=1000)

    async def scenario() -> None:
        async with sending(key) as sender:
            sender.submit(receiver.url, "req-1", JSON_OUTPUT)
            await sender.join()
            assert sender.stats().abandoned == 1
            assert sender.stats().delivered == 0
        assert len(receiver.requests) == 10

    try:
        run(scenario)
    finally:
        receiver.close()


def test_refused_connections_are_retried_and_the_url_secrets_stay_out_of_the_log(
    key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with sending(key, msgspec.structs.replace(FAST, max_attempts=3)) as sender:
            assert sender.submit(dead_url(), "req-1", JSON_OUTPUT)
            await sender.join()
            assert sender.stats().abandoned == 1

    with caplog.at_level(logging.DEBUG, logger="falrt.server.queue.webhooks"):
        run(scenario)
    assert "attempt 2 of 3" in caplog.text
    assert "abandoned after 3 attempts" in caplog.text
    assert "SECRET" not in caplog.text
    assert "hunter2" not in caplog.text


def test_a_receiver_that_does_not_answer_in_time_counts_as_a_failed_attempt(
    key: SigningKey,
) -> None:
    receiver = Receiver(hang_first=1)
    settings = msgspec.structs.replace(FAST, timeout_s=0.3)

    async def scenario() -> None:
        async with sending(key, settings) as sender:
            sender.submit(receiver.url, "req-1", JSON_OUTPUT)
            await sender.join()
            assert sender.stats().delivered == 1
        assert len(receiver.requests) == 2

    try:
        run(scenario)
    finally:
        receiver.close()


def test_close_cancels_retries_and_later_deliveries_are_dropped(key: SigningKey) -> None:
    receiver = Receiver(fail_first=1000)
    hourly = DeliverySettings(backoff_base_s=3600, backoff_cap_s=3600, max_pending=2)

    async def scenario() -> None:
        async with sending(key, hourly) as sender:
            taken = [sender.submit(receiver.url, f"req-{i}", JSON_OUTPUT) for i in range(3)]
            assert taken == [True, True, False]
            await receiver.received(2)  # both first attempts failed; now waiting an hour
            assert sender.stats().pending == 2
        assert sender.stats().dropped == 1
        assert not sender.submit(receiver.url, "req-late", JSON_OUTPUT)
        assert sender.stats().dropped == 2
        await sender.join()

    try:
        run(scenario)
    finally:
        receiver.close()


@pytest.mark.parametrize("url", [
    "", "ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "http://",
    "example.com/hook", "http://exa mple.com/", "http://example.com:99999/", "http://[::1/",
    "https://example.com/\n", "http://example.com/" + "a" * 2048,
])
def test_bad_webhook_urls_are_rejected(key: SigningKey, url: str) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        check_webhook_url(url)

    async def scenario() -> None:
        async with sending(key) as sender:
            assert not sender.submit(url, "req-1", JSON_OUTPUT)

    run(scenario)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook?token=x", "https://example.com", "https://[::1]:443/a",
    "https://user:pw@hooks.example.com/falrt",
])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_webhook_url(url) == url


def test_the_default_backoff_spreads_ten_attempts_over_about_two_hours() -> None:
    defaults = DeliverySettings()
    delays = [backoff_s(n, defaults) for n in range(1, defaults.max_attempts)]
    assert delays[:3] == [15, 30, 60]
    assert 1.9 * 3600 < sum(delays) < 2.2 * 3600
    assert (defaults.max_attempts, defaults.timeout_s) == (10, 15)


def test_the_server_serves_its_key_and_keeps_it_across_restarts(
    fresh_server: ServerProcess,
) -> None:
    def served() -> control_pb2.WebhookKey:
        with connection.channel(fresh_server.address) as channel:
            reply = control_pb2_grpc.ControlStub(channel).GetWebhookKeys(
                control_pb2.GetWebhookKeysRequest())
        (only,) = reply.keys
        return only

    first = served()
    assert (first.kty, first.crv) == ("OKP", "Ed25519")
    key_file = fresh_server.data_dir / KEY_FILE
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    on_disk = SigningKey.load_or_create(key_file)
    assert (first.x, first.kid) == (on_disk.x, on_disk.kid)
    body = webhook_body("req-1", JSON_OUTPUT)
    headers = on_disk.sign_headers("req-1", "local", body, time.time())
    assert verify(first.x, headers, body, time.time())

    assert fresh_server.stop() == 0
    fresh_server.start()
    assert served() == first
    assert key_file.read_bytes() not in fresh_server.log().encode()


def test_a_server_refuses_webhooks_to_its_own_network_at_submit_and_when_sending(
    fresh_server: ServerProcess,
) -> None:
    from falrt.client import SyncClient
    from tests.harness import wait_for

    receiver = Receiver()
    port = receiver.url.split(":")[2].split("/")[0]
    try:
        endpoint = fresh_server.deploy("examples/hello.py::Hello")
        with SyncClient(fresh_server.address) as client:
            for url in (receiver.url, f"http://127.1:{port}/hook", f"http://2130706433:{port}/",
                        "http://[::ffff:169.254.169.254]/latest/meta-data/",
                        "http://10.0.0.7/hook"):
                with pytest.raises(errors.InvalidArgumentError, match="webhook_url is refused"):
                    client.submit(endpoint, {"name": "x"}, webhook_url=url)
            # A name is resolved when the webhook is sent: localhost is refused then.
            handle = client.submit(endpoint, {"name": "x"},
                                   webhook_url=f"http://localhost:{port}/hook")
            assert client.wait(handle.request_id, timeout=30).output is not None
        wait_for(lambda: f"webhook for {handle.request_id}" in fresh_server.log()
                 and "refused" in fresh_server.log(), what="the refused delivery in the log")
        assert receiver.requests == []  # abandoned at once: no retry will come
    finally:
        receiver.close()
