"""fal's HTTP APIs on a real server over real HTTPS: every route, its errors, SSE, cancel,
webhooks, the auth modes, and curl.

The server is `falrt server --tls-cert/--tls-key --http-listen 127.0.0.1:0
--http-queue-listen 127.0.0.1:0` with a certificate this module makes; calls go through
httpx (verifying that certificate) and through the `curl` command. docs/http.md is the
contract these tests hold the gateway to.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from falrt.client import credentials
from falrt.client.control import ControlClient
from falrt.dev_certs import DevCerts, make
from tests import https
from tests.fifo import make_gate, release
from tests.harness import FALRT, ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

HELLO = "examples/hello.py::Hello"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts
           ) -> Iterator[ServerProcess]:
    proc = https.start(tmp_path_factory.mktemp("http-server"), certs,
                       "--http-queue-listen", "127.0.0.1:0", "--webhook-allow", "127.0.0.0/8")
    yield proc
    stop_cleanly(proc)


class Gateway:
    """The server's two HTTPS listeners, its keys, and an httpx client that trusts its CA."""

    def __init__(self, server: ServerProcess, certs: DevCerts) -> None:
        self.url = "https://" + https.gateway(server)
        self.queue_url = "https://" + server.wait_for_output(https.HTTP_QUEUE_LISTENING).group(1)
        self.ca = str(certs.path("ca.pem"))
        self.client = httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=60)
        admin = credentials.key_for(server.address)
        assert admin is not None
        self.admin = admin
        with ControlClient(f"https://{server.address}", tls_ca=self.ca, key=admin) as control:
            self.api = control.create_key("API", "caller").key
            self.stranger = control.create_key("API", "someone else's", owner="other").key
            revoked = control.create_key("API", "revoked")
            control.revoke_key(revoked.info.key_id)
            self.revoked = revoked.key
        self.wrong_secret = self.api.partition(":")[0] + ":not-the-secret"

    def post(self, path: str, body: Any, key: str | None = "admin", **kw: Any) -> httpx.Response:
        return self.client.post(self.url + path, json=body, headers=self.auth(key, kw), **kw)

    def get(self, url: str, key: str | None = "admin", **kw: Any) -> httpx.Response:
        return self.client.get(url, headers=self.auth(key, kw), **kw)

    def put(self, url: str, key: str | None = "admin") -> httpx.Response:
        return self.client.put(url, headers=self.auth(key, {}))

    def auth(self, key: str | None, kw: dict[str, Any]) -> dict[str, str]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Key {self.admin if key == 'admin' else key}"
        return headers

    def submit(self, endpoint: str, body: Any, key: str | None = "admin", **kw: Any
               ) -> dict[str, Any]:
        response = self.post("/queue/" + endpoint, body, key, **kw)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def events(self, url: str) -> Iterator[dict[str, Any]]:
        """The JSON of each server-sent event of `url`, as it comes."""
        headers = self.auth("admin", {})
        with self.client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: "):])

    def completed(self, submitted: dict[str, Any]) -> dict[str, Any]:
        """The last status event of a submitted request (its stream ends at COMPLETED)."""
        *_, last = self.events(submitted["status_url"] + "/stream?logs=1")
        return last


@pytest.fixture(scope="module")
def gw(server: ServerProcess, certs: DevCerts) -> Iterator[Gateway]:
    gateway = Gateway(server, certs)
    yield gateway
    gateway.client.close()


def deploy(server: ServerProcess, certs: DevCerts, target: str, *extra: str) -> str:
    out = server.cli("--host", f"https://{server.address}", "--tls-ca",
                     str(certs.path("ca.pem")), "deploy", target, *extra).stdout
    return out.strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def apps(server: ServerProcess, certs: DevCerts) -> dict[str, str]:
    """hello as private (the default), shared and public; a streaming app; gated apps."""
    found = {auth: deploy(server, certs, HELLO, "--app-name", f"hello-{auth}", "--auth", auth)
             for auth in ("private", "shared", "public")}
    found["tokens"] = deploy(server, certs, "examples/stream.py::Tokens")
    found["gated"] = deploy(server, certs, "tests/apps/gated.py::Gated")
    found["waiter"] = deploy(server, certs, "tests/apps/waiter.py::Waiter")
    return found


def envelope(response: httpx.Response, status: int, error_type: str) -> Any:
    """Checks fal's error envelope and header; returns its detail."""
    assert response.status_code == status, response.text
    assert response.headers["x-fal-error-type"] == error_type
    body = response.json()
    assert body["error_type"] == error_type
    return body["detail"]


# -- the direct API ---------------------------------------------------------------------

def test_a_direct_call_answers_its_output_on_the_same_connection(
        gw: Gateway, apps: dict[str, str]) -> None:
    response = gw.post("/" + apps["private"], {"name": "direct"})
    assert response.status_code == 200, response.text
    assert response.json() == {"greeting": "Hello, direct!"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-fal-request-id"]


def test_a_streaming_endpoint_answers_server_sent_events_in_order(
        gw: Gateway, apps: dict[str, str]) -> None:
    body = {"sentence": "one two three four", "delay_s": 0.01}
    with gw.client.stream("POST", f"{gw.url}/{apps['tokens']}", json=body,
                          headers=gw.auth("admin", {})) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        data = [json.loads(line[6:]) for line in response.iter_lines()
                if line.startswith("data: ")]
    assert [d["token"] for d in data] == ["one", "two", "three", "four"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]


def test_a_direct_call_whose_caller_goes_away_is_cancelled_on_its_runner(
        gw: Gateway, apps: dict[str, str], server: ServerProcess, certs: DevCerts) -> None:
    def in_flight() -> list[str]:
        with ControlClient(f"https://{server.address}", tls_ca=gw.ca, key=gw.admin) as c:
            return [r for runner in c.list_runners("waiter") for r in runner.in_flight_request_ids]

    assert gw.post(f"/{apps['waiter']}/async", {"text": "warm"}).status_code == 200
    seen: list[list[str]] = []
    watcher = threading.Timer(1.5, lambda: seen.append(in_flight()))
    watcher.start()
    with pytest.raises(httpx.ReadTimeout):
        gw.post(f"/{apps['waiter']}/async", {"text": "left", "wait": True}, timeout=3)
    watcher.join()
    assert len(seen[0]) == 1  # it was running when its caller went away
    wait_for(lambda: not in_flight(), timeout=30, what="the abandoned call to end")


def test_a_stream_whose_caller_goes_away_is_cancelled_on_its_runner(
        gw: Gateway, apps: dict[str, str], server: ServerProcess) -> None:
    def in_flight() -> list[str]:
        with ControlClient(f"https://{server.address}", tls_ca=gw.ca, key=gw.admin) as c:
            return [r for runner in c.list_runners("tokens") for r in runner.in_flight_request_ids]

    body = {"sentence": " ".join(["word"] * 100), "delay_s": 0.5}
    with gw.client.stream("POST", f"{gw.url}/{apps['tokens']}", json=body,
                          headers=gw.auth("admin", {})) as response:
        lines = response.iter_lines()  # (kept: a generator dropped closes the response)
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["index"] == 0
        assert len(in_flight()) == 1
    wait_for(lambda: not in_flight(), timeout=10, what="the abandoned stream to end")


def test_a_direct_call_no_runner_takes_within_its_start_timeout_is_a_users_504(
        gw: Gateway, apps: dict[str, str], tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "gate")
    running = gw.submit(apps["gated"], {"text": "holding", "gate": str(gate)})
    wait_for(lambda: gw.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the gated request to start")
    late = gw.post("/" + apps["gated"], {"text": "late"},
                   headers={"X-Fal-Request-Timeout": "1.5"})
    assert "X-Fal-Request-Timeout" in envelope(late, 504, "request_timeout")
    assert late.headers["x-fal-request-timeout-type"] == "user"
    release(gate)
    assert gw.completed(running)["status"] == "COMPLETED"
    direct = gw.post("/" + apps["gated"], {"text": "on time"},
                     headers={"X-Fal-Request-Timeout": "30"})
    assert direct.status_code == 200 and direct.json()["text"] == "on time"


# -- the queue API ----------------------------------------------------------------------

def test_submit_answers_fals_fields_with_absolute_urls_and_the_result_replays(
        gw: Gateway, apps: dict[str, str]) -> None:
    submitted = gw.submit(apps["private"], {"name": "queued"})
    request_id = submitted["request_id"]
    base = f"{gw.url}/queue/{apps['private']}/requests/{request_id}"
    assert submitted["response_url"] == base
    assert submitted["status_url"] == base + "/status"
    assert submitted["cancel_url"] == base + "/cancel"
    assert isinstance(submitted["queue_position"], int)
    last = gw.completed(submitted)
    assert last["status"] == "COMPLETED" and "inference_time" in last["metrics"]
    status = gw.get(submitted["status_url"], params={"logs": "1"})
    assert status.status_code == 200
    assert status.headers["x-fal-request-id"] == request_id
    logs = status.json()["logs"]
    assert any(f"greeting queued (request {request_id})" in line["message"] for line in logs)
    assert {"message", "level", "source", "timestamp"} <= set(logs[0])
    result = gw.get(submitted["response_url"])
    assert result.status_code == 200 and result.json() == {"greeting": "Hello, queued!"}
    assert result.headers["x-fal-request-id"] == request_id


def test_the_queue_listener_serves_the_queue_api_at_its_root(
        gw: Gateway, apps: dict[str, str]) -> None:
    response = gw.client.post(f"{gw.queue_url}/{apps['public']}", json={"name": "q"})
    assert response.status_code == 200, response.text
    submitted = response.json()
    assert submitted["status_url"].startswith(f"{gw.queue_url}/{apps['public']}/requests/")
    assert gw.completed(submitted)["status"] == "COMPLETED"
    assert gw.get(submitted["response_url"]).json() == {"greeting": "Hello, q!"}


def test_status_is_202_while_waiting_and_the_stream_follows_each_state_to_completed(
        gw: Gateway, apps: dict[str, str], tmp_path: Path) -> None:
    first_gate, second_gate = make_gate(tmp_path / "first"), make_gate(tmp_path / "second")
    first = gw.submit(apps["gated"], {"text": "first", "gate": str(first_gate)})
    wait_for(lambda: gw.get(first["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the first request to start")
    second = gw.submit(apps["gated"], {"text": "second", "gate": str(second_gate)})
    status = gw.get(second["status_url"])
    assert status.status_code == 202
    assert status.json()["status"] == "IN_QUEUE" and status.json()["queue_position"] == 0
    assert gw.get(first["status_url"]).status_code == 202
    early = gw.get(second["response_url"])
    envelope(early, 400, "not_completed")

    events = gw.events(second["status_url"] + "/stream?logs=1")
    seen = [next(events)]
    assert seen[0]["status"] == "IN_QUEUE"
    release(first_gate)
    while seen[-1]["status"] != "IN_PROGRESS" or not seen[-1]["logs"]:
        seen.append(next(events))
    release(second_gate)
    seen.extend(events)  # ends by itself at COMPLETED
    order = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    statuses = [event["status"] for event in seen]
    assert statuses == sorted(statuses, key=order.index)
    assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1
    lines = [line["message"] for event in seen for line in event.get("logs") or []]
    assert lines.count("working on second") == 1  # each event carries only new lines
    assert gw.get(second["status_url"]).status_code == 200


def test_cancel_answers_fals_outcomes(gw: Gateway, apps: dict[str, str], tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "gate")
    running = gw.submit(apps["gated"], {"text": "holding", "gate": str(gate)})
    wait_for(lambda: gw.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the gated request to start")
    queued = gw.submit(apps["gated"], {"text": "queued"})
    cancelled = gw.put(queued["cancel_url"])
    assert (cancelled.status_code, cancelled.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    assert gw.completed(queued)["error_type"] == "client_cancelled"
    envelope(gw.get(queued["response_url"]), 499, "client_cancelled")
    again = gw.put(queued["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    unknown = gw.put(queued["cancel_url"].replace(queued["request_id"], "no-such-request"))
    assert (unknown.status_code, unknown.json()) == (404, {"status": "NOT_FOUND"})
    release(gate)
    assert gw.completed(running)["status"] == "COMPLETED"


def test_a_failed_request_completes_with_its_error_and_its_result_replays_it(
        gw: Gateway, apps: dict[str, str]) -> None:
    submitted = gw.submit(apps["gated"], {"text": "boom", "fail": True},
                          headers={"X-Fal-No-Retry": "1"})
    last = gw.completed(submitted)
    assert last["error_type"] == "runner_server_error" and "failing on purpose" in last["error"]
    detail = envelope(gw.get(submitted["response_url"]), 500, "runner_server_error")
    assert "failing on purpose for boom" in detail


def test_fal_max_queue_length_refuses_a_submit_to_a_longer_queue_with_429(
        gw: Gateway, apps: dict[str, str], tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "gate")
    running = gw.submit(apps["gated"], {"text": "holding", "gate": str(gate)})
    wait_for(lambda: gw.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the gated request to start")
    waiting = [gw.submit(apps["gated"], {"text": f"w{n}"}) for n in range(2)]
    refused = gw.post("/queue/" + apps["gated"], {"text": "x"},
                      params={"fal_max_queue_length": "1"})
    envelope(refused, 429, "resource_exhausted")
    for item in waiting:
        assert gw.put(item["cancel_url"]).status_code == 202
    release(gate)
    assert gw.completed(running)["status"] == "COMPLETED"


# -- errors -----------------------------------------------------------------------------

def test_each_error_type_has_fals_status_and_envelope(gw: Gateway, apps: dict[str, str]) -> None:
    for prefix in ("", "/queue"):
        envelope(gw.post(f"{prefix}/local/no-such-app", {}), 404, "not_found")
        envelope(gw.post(f"{prefix}/{apps['private']}", {"name": "x"}, None),
                 401, "unauthenticated")
        envelope(gw.post(f"{prefix}/{apps['private']}", {"name": "x"}, gw.wrong_secret),
                 401, "unauthenticated")
        envelope(gw.post(f"{prefix}/{apps['private']}", {"name": "x"}, gw.stranger),
                 403, "permission_denied")
    detail = envelope(gw.post("/" + apps["private"], {"nom": "x"}), 422, "bad_request")
    assert detail == [{"loc": ["body", "name"], "msg": "field required", "type": "value_error"}]
    envelope(gw.get(f"{gw.url}/queue/{apps['private']}/requests/nope/status"), 404, "not_found")
    envelope(gw.get(f"{gw.url}/nothing"), 404, "not_found")
    envelope(gw.get(f"{gw.url}/{apps['private']}"), 405, "method_not_allowed")


@pytest.mark.parametrize(("headers", "params"), [
    ({"X-Fal-Request-Timeout": "soon"}, {}),
    ({"X-Fal-Request-Timeout": "-1"}, {}),
    ({"X-Fal-Queue-Priority": "urgent"}, {}),
    ({"X-Fal-No-Retry": "perhaps"}, {}),
    ({"X-Fal-Retry-Config": "{not json"}, {}),
    ({"X-Fal-Retry-Config": '{"later": {"retries": 1}}'}, {}),
    ({"X-Fal-Retry-Config": '{"timeout": {"retries": -1}}'}, {}),
    ({"X-Fal-Idempotency-Key": "k" * 257}, {}),
    ({}, {"fal_max_queue_length": "-1"}),
    ({}, {"fal_webhook": "ftp://example.com/hook"}),
])
def test_a_bad_header_or_query_value_is_a_bad_request(
        gw: Gateway, apps: dict[str, str], headers: dict[str, str], params: dict[str, str]
) -> None:
    response = gw.post("/queue/" + apps["public"], {"name": "x"}, headers=headers,
                       params=params)
    assert envelope(response, 400, "bad_request")


def test_good_header_values_are_taken(gw: Gateway, apps: dict[str, str]) -> None:
    headers = {"X-Fal-Request-Timeout": "30", "X-Fal-Queue-Priority": "low",
               "X-Fal-No-Retry": "true", "X-Fal-Retry-Config": '{"timeout": {"retries": 0}}',
               "X-Fal-Idempotency-Key": "same-key"}
    first = gw.submit(apps["public"], {"name": "h"}, headers=headers)
    again = gw.submit(apps["public"], {"name": "h"}, headers=headers)
    assert again["request_id"] == first["request_id"] and again["deduplicated"] is True
    assert gw.completed(first)["status"] == "COMPLETED"


def test_an_input_over_the_payload_limit_is_refused_with_413_before_it_is_read(
        gw: Gateway, apps: dict[str, str]) -> None:
    host, _, port = gw.url.removeprefix("https://").rpartition(":")
    context = ssl.create_default_context(cafile=gw.ca)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"POST /{apps['public']} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {1 << 40}\r\n\r\n"
                    .encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"x-fal-error-type: payload_too_large" in head
    assert json.loads(body)["error_type"] == "payload_too_large"


def test_a_web_page_of_any_origin_may_call_with_its_key(gw: Gateway, apps: dict[str, str]) -> None:
    origin = {"Origin": "https://page.example"}
    preflight = gw.client.options(f"{gw.url}/queue/{apps['private']}", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = gw.post("/" + apps["private"], {"name": "page"}, headers=origin)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "x-fal-request-id" in response.headers["access-control-expose-headers"]


# -- webhooks ---------------------------------------------------------------------------

class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hook)
        self.bodies: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        assert isinstance(self.server, Receiver)
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_webhook_set_by_query_receives_the_result(gw: Gateway, apps: dict[str, str]) -> None:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        submitted = gw.submit(apps["public"], {"name": "hook"},
                              params={"fal_webhook": receiver.url})
        assert submitted["gateway_request_id"] == submitted["request_id"]
        body = wait_for(lambda: receiver.bodies and receiver.bodies[0], what="the webhook")
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert body["request_id"] == submitted["request_id"]
    assert body["status"] == "OK" and body["payload"] == {"greeting": "Hello, hook!"}


# -- auth modes: the gRPC matrix (tests/test_security.py) over HTTP ----------------------

@pytest.mark.parametrize("prefix", ["", "/queue"])
def test_the_auth_modes_answer_as_the_grpc_edge_does(
        gw: Gateway, apps: dict[str, str], prefix: str) -> None:
    expected = {
        ("private", None): 401, ("private", gw.admin): 200, ("private", gw.api): 200,
        ("private", gw.stranger): 403, ("private", gw.revoked): 401,
        ("private", gw.wrong_secret): 401,
        ("shared", None): 401, ("shared", gw.stranger): 200, ("shared", gw.revoked): 401,
        ("public", None): 200, ("public", gw.stranger): 200, ("public", gw.revoked): 401,
        ("public", "malformed"): 401,
    }
    got = {(mode, key): gw.post(f"{prefix}/{apps[mode]}", {"name": "m"}, key).status_code
           for mode, key in expected}
    assert got == expected


def test_a_private_apps_requests_are_hidden_from_other_owners(
        gw: Gateway, apps: dict[str, str]) -> None:
    submitted = gw.submit(apps["private"], {"name": "mine"})
    for url in (submitted["status_url"], submitted["response_url"]):
        envelope(gw.get(url, gw.stranger), 403, "permission_denied")
        envelope(gw.get(url, None), 401, "unauthenticated")
    assert gw.put(submitted["cancel_url"], gw.stranger).status_code == 403
    assert gw.completed(submitted)["status"] == "COMPLETED"


# -- listeners ----------------------------------------------------------------------------

def test_under_mutual_tls_an_http_client_needs_a_certificate_the_ca_signed(
        tmp_path: Path, certs: DevCerts) -> None:
    args = ["--tls-cert", str(certs.path("server.pem")), "--tls-key", str(certs.path("server.key")),
            "--tls-client-ca", str(certs.path("ca.pem")),
            "--tls-runner-cert", str(certs.path("runner.pem")),
            "--tls-runner-key", str(certs.path("runner.key")), "--http-listen", "127.0.0.1:0"]
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=args).start()
    try:
        url = "https://" + https.gateway(proc) + "/local/nothing"
        anonymous = ssl.create_default_context(cafile=str(certs.path("ca.pem")))
        with pytest.raises(httpx.TransportError):
            httpx.post(url, json={}, verify=anonymous)
        known = ssl.create_default_context(cafile=str(certs.path("ca.pem")))
        known.load_cert_chain(str(certs.path("client.pem")), str(certs.path("client.key")))
        assert httpx.post(url, json={}, verify=known).status_code == 404
    finally:
        stop_cleanly(proc)


def test_plain_http_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [FALRT, "server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--http-listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "would serve plain HTTP to the network" in result.stderr
    assert "--tls-cert" in result.stderr


# -- curl -------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_curl_calls_a_deployed_app_both_ways(gw: Gateway, apps: dict[str, str]) -> None:
    def curl(*args: str) -> str:
        return subprocess.run(
            ["curl", "-sS", "--fail-with-body", "--cacert", gw.ca,
             "-H", f"Authorization: Key {gw.admin}", *args],
            capture_output=True, text=True, check=True, timeout=60).stdout

    direct = curl("-d", '{"name": "curl"}', f"{gw.url}/{apps['private']}")
    assert json.loads(direct) == {"greeting": "Hello, curl!"}
    submitted = json.loads(curl("-H", "Content-Type: application/json",
                                "-d", '{"name": "curl-q"}', f"{gw.url}/queue/{apps['private']}"))
    stream = curl("-N", submitted["status_url"] + "/stream")
    assert json.loads(stream.strip().splitlines()[-1][6:])["status"] == "COMPLETED"
    assert json.loads(curl(submitted["response_url"])) == {"greeting": "Hello, curl-q!"}
