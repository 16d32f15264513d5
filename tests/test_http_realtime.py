"""Realtime over WebSockets and each app's OpenAPI document, on a real server over HTTPS.

The server is real (`falrt server --tls-cert/--tls-key --http-listen 127.0.0.1:0`, with a
certificate this module makes) and so is its runner (tests/apps/chat.py); the clients are
the `websockets` and `httpx` libraries, trusting the test's CA. What is checked is in
docs/http.md: frames (JSON text, msgpack binary), auth (the header, or
fal's `fal_jwt_token` query parameter), close codes and fal's error frame, and that a
caller leaving frees the runner's slot.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import ssl
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from openapi_spec_validator import validate
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from falrt.client import credentials
from falrt.dev_certs import DevCerts, make
from tests import https
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

CHAT = "tests/apps/chat.py::Chat"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts
           ) -> Iterator[ServerProcess]:
    proc = https.start(tmp_path_factory.mktemp("realtime-server"), certs)
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> str:
    return https.gateway(server)


@pytest.fixture(scope="module")
def tls(certs: DevCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.path("ca.pem")))


def cli(server: ServerProcess, certs: DevCerts, *args: str, check: bool = True
        ) -> str:
    """The real CLI against the TLS server; its stdout."""
    return server.cli("--host", f"https://{server.address}", "--tls-ca",
                      str(certs.path("ca.pem")), *args, check=check).stdout


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    found = credentials.key_for(server.address)  # the admin key the server recorded
    assert found is not None
    return found


@pytest.fixture(scope="module")
def stranger(server: ServerProcess, certs: DevCerts) -> str:
    """An API key of another owner: valid, but not for this owner's private apps."""
    return cli(server, certs, "keys", "create", "--scope", "API", "--owner", "other").strip()


@pytest.fixture(scope="module")
def chat(server: ServerProcess, certs: DevCerts) -> str:
    return cli(server, certs, "deploy", CHAT).strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def public_chat(server: ServerProcess, certs: DevCerts) -> str:
    out = cli(server, certs, "deploy", CHAT, "--app-name", "chat-public", "--auth", "public")
    return out.strip().splitlines()[-1].strip()


def socket(gateway: str, tls: ssl.SSLContext, path: str, key: str | None = None) -> connect:
    """A WebSocket to the gateway (`async with` it). The asyncio client, not the threaded
    one: a TLS socket read in one thread while written in another breaks at random
    (python/cpython#137583, miguelgrinberg/python-socketio#1568)."""
    headers = {"Authorization": f"Key {key}"} if key else None
    return connect(f"wss://{gateway}/{path.lstrip('/')}", ssl=tls, additional_headers=headers,
                   open_timeout=30, max_size=None)


async def converse(ws: ClientConnection, inputs: Iterable[str | bytes], count: int
                   ) -> list[str | bytes]:
    """Sends `inputs` while reading `count` replies (both directions at once, as a real
    caller does)."""

    async def send() -> None:
        for item in inputs:
            await ws.send(item)

    sender = asyncio.get_running_loop().create_task(send())
    try:
        return [await asyncio.wait_for(ws.recv(), 60) for _ in range(count)]
    finally:
        await asyncio.wait_for(sender, 60)


async def closed_with(ws: ClientConnection) -> tuple[dict[str, Any], int, str]:
    """fal's error frame the server sent, then its close code and reason."""
    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 60)
    assert closed.value.rcvd is not None
    return frame, closed.value.rcvd.code, closed.value.rcvd.reason


async def texts(gateway: str, tls: ssl.SSLContext, path: str, key: str | None,
                lines: Iterable[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` replies to JSON `lines` sent on one socket."""
    async with socket(gateway, tls, path, key) as ws:
        return [json.loads(r) for r in await converse(ws, map(json.dumps, lines), count)]


async def refusal(gateway: str, tls: ssl.SSLContext, path: str, key: str | None = None
                  ) -> tuple[dict[str, Any], int, str]:
    async with socket(gateway, tls, path, key) as ws:
        return await closed_with(ws)


def test_a_websocket_session_of_a_thousand_messages_comes_back_in_order(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    """fal's realtime URL (`/realtime`) is the app's one realtime endpoint, /chat."""
    lines = ({"text": f"m{n}"} for n in range(1000))
    replies = asyncio.run(texts(gateway, tls, f"{chat}/realtime", key, lines, 1000))
    assert [(r["text"], r["n"]) for r in replies] == [(f"M{n}", n + 1) for n in range(1000)]
    assert len({r["runner"] for r in replies}) == 1


def test_binary_frames_are_msgpack_and_are_answered_in_binary(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    async def scenario() -> list[str | bytes]:
        async with socket(gateway, tls, f"{chat}/chat", key) as ws:  # the endpoint's path
            return await converse(ws, [msgspec.msgpack.encode({"text": t}) for t in "ab"], 2)

    replies = asyncio.run(scenario())
    assert all(isinstance(r, bytes) for r in replies)
    assert [msgspec.msgpack.decode(r)["text"] for r in replies] == ["A", "B"]


def test_a_caller_faster_than_the_handler_is_slowed_down_not_failed(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    """300 inputs sent at once to a handler that reads one every 2 ms: more than the
    runner's buffer of 64, so the server must stop reading the socket for a while."""
    lines = ({"text": f"s{n}", "pause_s": 0.002} for n in range(300))
    replies = asyncio.run(texts(gateway, tls, f"{chat}/chat", key, lines, 300))
    assert [r["n"] for r in replies] == list(range(1, 301))


def test_the_key_may_come_in_fal_jwt_token_and_is_not_logged(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str, server: ServerProcess
) -> None:
    path = f"{chat}/realtime?fal_jwt_token={key}&max_buffering=2"
    assert asyncio.run(texts(gateway, tls, path, None, [{"text": "hi"}], 1))[0]["text"] == "HI"
    assert key.partition(":")[2] not in server.log()


def test_a_private_app_refuses_a_socket_without_a_key_with_1008(
    gateway: str, tls: ssl.SSLContext, chat: str
) -> None:
    frame, code, reason = asyncio.run(refusal(gateway, tls, f"{chat}/realtime"))
    assert frame["type"] == "x-fal-error" and frame["error"] == "unauthenticated"
    assert "needs a key" in frame["reason"]
    assert code == 1008 and reason.startswith("unauthenticated: ")


def test_another_owners_key_is_refused_by_a_private_app_with_1008(
    gateway: str, tls: ssl.SSLContext, chat: str, stranger: str
) -> None:
    frame, code, reason = asyncio.run(refusal(gateway, tls, f"{chat}/realtime", stranger))
    assert (frame["error"], code) == ("permission_denied", 1008)
    assert reason.startswith("permission_denied: ")


def test_a_wrong_key_is_refused_even_for_a_public_app(
    gateway: str, tls: ssl.SSLContext, public_chat: str, key: str
) -> None:
    wrong = key.partition(":")[0] + ":not-the-secret"
    frame, code, _ = asyncio.run(refusal(gateway, tls, f"{public_chat}/realtime", wrong))
    assert (frame["error"], code) == ("unauthenticated", 1008)


def test_a_public_app_takes_a_socket_without_a_key(
    gateway: str, tls: ssl.SSLContext, public_chat: str
) -> None:
    replies = asyncio.run(texts(gateway, tls, f"{public_chat}/realtime", None,
                                [{"text": "open"}], 1))
    assert replies[0]["text"] == "OPEN"


@pytest.mark.parametrize(("path", "error"), [
    ("local/no-such-app/realtime", "not_found"),
    ("someone/chat/realtime", "not_found"),
    ("{chat}/nowhere", "not_found"),
    ("{chat}", "bad_request"),  # "/" is not a realtime endpoint
])
def test_a_socket_to_what_is_not_a_realtime_endpoint_closes_with_1008(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str, path: str, error: str
) -> None:
    frame, code, reason = asyncio.run(refusal(gateway, tls, path.format(chat=chat), key))
    assert (frame["error"], code) == (error, 1008)
    assert reason.startswith(f"{error}: ")


def test_a_handler_error_ends_the_session_with_1011(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    async def scenario() -> tuple[dict[str, Any], int, str]:
        async with socket(gateway, tls, f"{chat}/chat", key) as ws:
            await ws.send(json.dumps({"text": "fine"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["text"] == "FINE"
            await ws.send(json.dumps({"text": "boom", "fail": True}))
            return await closed_with(ws)

    frame, code, reason = asyncio.run(scenario())
    assert frame["error"] == "runner_server_error" and "cannot answer 'boom'" in frame["reason"]
    assert code == 1011 and reason.startswith("runner_server_error: ")


def test_a_caller_that_disconnects_frees_the_runner(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    """chat's one runner has two slots: more sessions than that, each left early while
    inputs still flow, must each give its slot back for the next to start."""

    async def leave_early(n: int) -> None:
        async with socket(gateway, tls, f"{chat}/chat", key) as ws:
            await ws.send(json.dumps({"text": f"hi{n}"}))
            for _ in range(20):
                await ws.send(json.dumps({"text": "more", "pause_s": 0.05}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["text"] == f"HI{n}"

    async def scenario() -> list[dict[str, Any]]:
        for n in range(4):
            await leave_early(n)
        return await texts(gateway, tls, f"{chat}/chat", key, [{"text": "after"}], 1)

    assert asyncio.run(scenario())[0]["text"] == "AFTER"


def test_a_caller_that_leaves_while_queued_gives_its_place_up(
    gateway: str, tls: ssl.SSLContext, chat: str, key: str
) -> None:
    """Both of the runner's slots held, a third session waits in the queue; its caller
    sends an input and leaves. Once a slot is free, the next caller gets it."""

    async def scenario() -> list[dict[str, Any]]:
        async with socket(gateway, tls, f"{chat}/chat", key) as first, \
                socket(gateway, tls, f"{chat}/chat", key) as second:
            for ws in (first, second):
                await ws.send(json.dumps({"text": "hold"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 60))["text"] == "HOLD"
            async with socket(gateway, tls, f"{chat}/chat", key) as queued:
                await queued.send(json.dumps({"text": "never answered"}))
        return await texts(gateway, tls, f"{chat}/chat", key, [{"text": "next"}], 1)

    assert asyncio.run(scenario())[0]["text"] == "NEXT"


def test_fal_clients_realtime_with_a_key_header_talks_msgpack_to_falrt(
    gateway: str, certs: DevCerts, chat: str, key: str
) -> None:
    """fal_client (PyPI) pointed at falrt the way a fal user would; `use_jwt=False` sends
    the key as a header (its default asks fal's token service for a JWT). Its asyncio
    client: the threaded one shares a TLS socket between threads (see `socket`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAL_KEY", key)
        patch.setenv("FAL_RUN_HOST", gateway)
        patch.setenv("SSL_CERT_FILE", str(certs.path("ca.pem")))
        for name in [name for name in sys.modules if name.partition(".")[0] == "fal_client"]:
            patch.delitem(sys.modules, name)  # an earlier import read another host
        fal = importlib.import_module("fal_client")

        async def scenario() -> list[dict[str, Any]]:
            async with fal.realtime_async(chat, use_jwt=False) as connection:
                replies = []
                for text in ("one", "two"):
                    await connection.send({"text": text})
                    replies.append(await asyncio.wait_for(connection.recv(), 60))
                return replies

        replies = asyncio.run(scenario())
    assert [r["text"] for r in replies] == ["ONE", "TWO"]


def test_the_queue_api_takes_no_websocket_and_the_refusal_logs_no_key(
    server: ServerProcess, gateway: str, tls: ssl.SSLContext, key: str
) -> None:
    async def scenario() -> None:
        async with socket(gateway, tls, f"queue/local/chat?fal_jwt_token={key}"):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(scenario())
    assert refused.value.response.status_code == 403
    wait_for(lambda: "queue/local/chat?fal_jwt_token=REDACTED" in server.log(),
             what="the refused socket logged")
    assert key.partition(":")[2] not in server.log()  # uvicorn logged the URL, redacted


# -- OpenAPI -------------------------------------------------------------------------

def get(gateway: str, certs: DevCerts, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Key {key}"} if key else {}
    trust = ssl.create_default_context(cafile=str(certs.path("ca.pem")))
    return httpx.get(f"https://{gateway}/{path.lstrip('/')}", headers=headers, verify=trust,
                     timeout=30)


def test_openapi_json_of_a_private_app_needs_its_key_and_validates(
    gateway: str, certs: DevCerts, chat: str, key: str
) -> None:
    response = get(gateway, certs, f"{chat}/openapi.json", key)
    assert response.status_code == 200, response.text
    document = response.json()
    validate(document)
    assert document["servers"] == [{"url": f"https://{gateway}"}]
    ping = document["paths"][f"/{chat}"]["post"]["requestBody"]["content"]
    line = document["components"]["schemas"][ping["application/json"]["schema"]["$ref"]
                                             .rsplit("/", 1)[1]]
    assert set(line["properties"]) == {"text", "fail", "pause_s"}
    assert "x-falrt-websocket" in document["paths"][f"/{chat}/chat"]
    assert document["security"] == [{"Key": []}]


def test_openapi_json_without_a_key_is_401_with_fals_envelope(
    gateway: str, certs: DevCerts, chat: str
) -> None:
    response = get(gateway, certs, f"{chat}/openapi.json")
    assert response.status_code == 401
    assert response.json()["error_type"] == "unauthenticated"
    assert response.headers["x-fal-error-type"] == "unauthenticated"


def test_openapi_json_with_another_owners_key_is_403(
    gateway: str, certs: DevCerts, chat: str, stranger: str
) -> None:
    response = get(gateway, certs, f"{chat}/openapi.json", stranger)
    assert response.status_code == 403
    assert response.json()["error_type"] == "permission_denied"


def test_openapi_json_of_a_public_app_needs_no_key(
    gateway: str, certs: DevCerts, public_chat: str
) -> None:
    response = get(gateway, certs, f"{public_chat}/openapi.json")
    assert response.status_code == 200
    validate(response.json())
    assert response.json()["security"] == [{}, {"Key": []}]


@pytest.mark.parametrize("path", ["local/no-such-app/openapi.json", "other/chat/openapi.json"])
def test_openapi_json_of_an_unknown_app_is_404(
    gateway: str, certs: DevCerts, key: str, chat: str, path: str
) -> None:
    response = get(gateway, certs, path, key)
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_the_cli_prints_the_document_the_gateway_serves(
    gateway: str, certs: DevCerts, chat: str, key: str, server: ServerProcess, tmp_path: Path
) -> None:
    served = get(gateway, certs, f"{chat}/openapi.json", key).json()
    printed = json.loads(cli(server, certs, "apps", "openapi", "chat"))
    validate(printed)
    assert printed == {k: v for k, v in served.items() if k != "servers"}
    target = tmp_path / "chat.json"
    cli(server, certs, "apps", "openapi", "chat", "--output", str(target),
        "--server-url", f"https://{gateway}")
    assert json.loads(target.read_text()) == served
    missing = server.cli("--host", f"https://{server.address}", "--tls-ca",
                         str(certs.path("ca.pem")), "apps", "openapi", "nope", check=False)
    assert missing.returncode != 0 and "no app" in missing.stderr
