"""fal's own Python client (`fal-client` from PyPI), and examples/clients/ (the Node script,
and the browser page's script run under Node: its fetch path, as Node 20 has no
EventSource), against falrt.

The server is real (`falrt server --tls-cert/--tls-key --http-listen 127.0.0.1:0`, with a
certificate this module makes), and fal_client is pointed at it only the way a fal user
would: `FAL_KEY`, `FAL_RUN_HOST`, `FAL_QUEUE_RUN_HOST` and `SSL_CERT_FILE` in the
environment. fal_client reads the two hosts when it is imported, so the fixture sets the
variables first and imports a fresh copy of it; nothing of fal_client is patched. What it
sends and reads is in docs/fal-client-wire.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from falrt.client import credentials
from falrt.dev_certs import DevCerts, make
from tests import https
from tests.fifo import make_gate, release
from tests.harness import REPO, ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

HELLO = "examples/hello.py::Hello"
SPEAKER = "tests/apps/speaker.py::Speaker"
WAITER = "tests/apps/waiter.py::Waiter"
NODE_CLIENT = REPO / "examples" / "clients" / "call.mjs"
PAGE = REPO / "examples" / "clients" / "index.html"
# Runs the page's script under Node with the few DOM calls it makes stubbed (fetch and the
# stream reading are Node's own, as in a browser), submits the form, prints what it shows.
PAGE_RUNNER = """
const fields = JSON.parse(process.argv[1]);
const elements = {};
const element = (id) => elements[id] ??= {
  value: fields[id] ?? "", textContent: "", handlers: {},
  addEventListener(type, handler) { this.handlers[type] = handler; },
};
globalThis.document = { getElementById: element };
await import("data:text/javascript," + encodeURIComponent(fields.script));
await element("call").handlers.submit({ preventDefault() {} });
console.log(JSON.stringify({ status: element("status").textContent,
                             result: element("result").textContent }));
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts
           ) -> Iterator[ServerProcess]:
    proc = https.start(tmp_path_factory.mktemp("fal-client-server"), certs)
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> str:
    return https.gateway(server)


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    found = credentials.key_for(server.address)  # the admin key the server recorded
    assert found is not None
    return found


def deploy(server: ServerProcess, certs: DevCerts, target: str) -> str:
    out = server.cli("--host", f"https://{server.address}", "--tls-ca",
                     str(certs.path("ca.pem")), "deploy", target).stdout
    return out.strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def hello(server: ServerProcess, certs: DevCerts) -> str:
    return deploy(server, certs, HELLO)


@pytest.fixture(scope="module")
def speaker(server: ServerProcess, certs: DevCerts) -> str:
    return deploy(server, certs, SPEAKER)


@pytest.fixture(scope="module")
def waiter(server: ServerProcess, certs: DevCerts) -> str:
    return deploy(server, certs, WAITER)


@pytest.fixture(scope="module")
def fal(gateway: str, key: str, certs: DevCerts) -> Iterator[ModuleType]:
    """fal_client, imported with the environment a fal user would set for falrt."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAL_KEY", key)
        patch.setenv("FAL_RUN_HOST", gateway)
        patch.setenv("FAL_QUEUE_RUN_HOST", f"{gateway}/queue")
        patch.setenv("SSL_CERT_FILE", str(certs.path("ca.pem")))
        for name in [name for name in sys.modules if name.partition(".")[0] == "fal_client"]:
            patch.delitem(sys.modules, name)  # an earlier import read other hosts
        yield importlib.import_module("fal_client")


def messages(logs: list[dict[str, Any]] | None) -> list[str]:
    return [entry["message"].strip() for entry in logs or []]


def test_run_calls_the_app_on_the_same_connection(fal: ModuleType, hello: str) -> None:
    assert fal.run(hello, {"name": "fal"}) == {"greeting": "Hello, fal!"}


def test_a_bad_input_is_a_422_with_the_fields_in_detail(fal: ModuleType, hello: str) -> None:
    with pytest.raises(fal.FalClientHTTPError) as raised:
        fal.run(hello, {"nom": "fal"})
    assert raised.value.status_code == 422
    assert isinstance(raised.value.message, list) and raised.value.message  # pydantic-style


def test_submit_status_and_result_follow_a_queued_request(fal: ModuleType, hello: str) -> None:
    handle = fal.submit(hello, {"name": "queue"})
    assert handle.request_id
    done = wait_for(lambda: s if isinstance(s := handle.status(with_logs=True), fal.Completed)
                    else None, what="COMPLETED")
    assert done.error is None
    assert any(line.startswith("greeting queue") for line in messages(done.logs))
    again = fal.status(hello, handle.request_id, with_logs=False)
    assert isinstance(again, fal.Completed) and again.logs is None
    assert fal.result(hello, handle.request_id) == {"greeting": "Hello, queue!"}
    assert handle.get() == {"greeting": "Hello, queue!"}


def test_the_async_client_submits_with_fals_headers_and_follows_events(
    fal: ModuleType, hello: str,
) -> None:
    async def follow() -> tuple[list[Any], Any]:
        client = fal.AsyncClient()
        # X-Fal-Queue-Priority, X-Fal-Request-Timeout and X-Fal-Runner-Hint go with it.
        handle = await client.submit(hello, {"name": "aio"}, priority="low", start_timeout=30,
                                     hint="any")
        events = [status async for status in handle.iter_events(with_logs=True,
                                                                 interval=0.02)]
        return events, await handle.get()

    events, result = asyncio.run(follow())
    assert result == {"greeting": "Hello, aio!"}
    assert isinstance(events[-1], fal.Completed)
    assert any(line.startswith("greeting aio") for line in messages(events[-1].logs))


def test_an_unknown_app_is_a_404_with_its_error_type(fal: ModuleType) -> None:
    with pytest.raises(fal.FalClientHTTPError) as raised:
        fal.run("local/no-such-app", {})
    assert raised.value.status_code == 404 and raised.value.error_type
    with pytest.raises(fal.FalClientHTTPError) as queued:
        fal.submit("local/no-such-app", {})
    assert queued.value.status_code == 404


def test_subscribe_reports_queued_in_progress_and_completed_with_logs(
    fal: ModuleType, speaker: str, tmp_path: Path,
) -> None:
    first_gate, gate = make_gate(tmp_path / "first"), make_gate(tmp_path / "second")
    first = fal.submit(speaker, {"text": "first", "gate": str(first_gate)})
    wait_for(lambda: isinstance(first.status(), fal.InProgress), timeout=60,
             what="first in progress (its runner starts)")
    updates: list[Any] = []
    enqueued: list[str] = []
    opened: set[Path] = set()

    def on_update(status: Any) -> None:
        # Each gate opens once the state it holds the request in has been reported.
        updates.append(status)
        if isinstance(status, fal.Queued) and first_gate not in opened:
            opened.add(first_gate)
            release(first_gate)
        if (isinstance(status, fal.InProgress) and gate not in opened
                and "heard second" in messages(status.logs)):
            opened.add(gate)
            release(gate)

    result = fal.subscribe(speaker, {"text": "second", "gate": str(gate)}, with_logs=True,
                           on_enqueue=enqueued.append, on_queue_update=on_update,
                           client_timeout=60)  # fal_client would poll forever otherwise
    assert result == {"echo": "second"}
    assert len(enqueued) == 1 and enqueued[0] != first.request_id
    kinds = [type(u).__name__ for u in updates]
    assert kinds[0] == "Queued" and updates[0].position == 0, kinds
    assert kinds[-1] == "Completed" and "InProgress" in kinds, kinds
    assert kinds == sorted(kinds, key=["Queued", "InProgress", "Completed"].index), kinds
    assert messages(updates[-1].logs) == ["heard second", "said second"]
    assert first.get() == {"echo": "first"}


def test_stream_yields_each_event_of_a_streaming_endpoint(fal: ModuleType, speaker: str) -> None:
    events = list(fal.stream(speaker, {"sentence": "the quick brown fox"}))
    assert events == [{"index": i, "word": w}
                      for i, w in enumerate(["the", "quick", "brown", "fox"])]


def test_the_async_client_streams_too(fal: ModuleType, speaker: str) -> None:
    async def words() -> list[Any]:
        return [event async for event in fal.AsyncClient().stream(speaker, {"sentence": "a b"})]

    assert asyncio.run(words()) == [{"index": 0, "word": "a"}, {"index": 1, "word": "b"}]


def test_cancel_stops_a_running_request_and_answers_fals_codes(
    fal: ModuleType, waiter: str,
) -> None:
    handle = fal.submit(f"{waiter}/async", {"text": "hold", "wait": True})
    wait_for(lambda: isinstance(handle.status(), fal.InProgress), timeout=60,
             what="in progress (its runner starts)")
    assert fal.cancel(waiter, handle.request_id) is None  # 202: accepted
    done = wait_for(lambda: s if isinstance(s := handle.status(), fal.Completed) else None,
                    what="COMPLETED after cancel")
    assert done.error_type == "client_cancelled"
    with pytest.raises(fal.FalClientHTTPError) as raised:
        fal.result(waiter, handle.request_id)  # the outcome is replayed as an error
    assert raised.value.error_type == "client_cancelled"
    with pytest.raises(fal.FalClientHTTPError) as too_late:
        handle.cancel()
    assert too_late.value.status_code == 400
    assert json.loads(too_late.value.message) == {"status": "ALREADY_COMPLETED"}
    with pytest.raises(fal.FalClientHTTPError) as unknown:
        fal.cancel(waiter, "no-such-request")
    assert unknown.value.status_code == 404


def test_a_node_fetch_client_submits_follows_the_status_stream_and_gets_the_result(
    gateway: str, key: str, certs: DevCerts, hello: str,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js 18 or later is needed (scripts/node.sh installs it)")
    out = subprocess.run(
        [node, str(NODE_CLIENT), hello, json.dumps({"name": "node"})],
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "FALRT_URL": f"https://{gateway}", "FAL_KEY": key,
             "NODE_EXTRA_CA_CERTS": str(certs.path("ca.pem"))},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["result"] == {"greeting": "Hello, node!"}
    assert report["statuses"][-1] == "COMPLETED"
    assert any(line.startswith("greeting node") for line in report["logs"])


def test_the_browser_pages_script_follows_a_request_with_a_key(
    gateway: str, key: str, certs: DevCerts, hello: str,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js 18 or later is needed (scripts/node.sh installs it)")
    script = re.search(r'<script type="module">(.*)</script>', PAGE.read_text(), re.S)
    assert script is not None
    fields = {"script": script.group(1), "base": f"https://{gateway}", "key": key,
              "app": hello, "input": json.dumps({"name": "page"})}
    out = subprocess.run(
        [node, "--input-type=module", "-e", PAGE_RUNNER, json.dumps(fields)],
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "NODE_EXTRA_CA_CERTS": str(certs.path("ca.pem"))},
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert json.loads(shown["result"]) == {"greeting": "Hello, page!"}, shown
    lines = shown["status"].splitlines()
    statuses = [line.split()[0] for line in lines[1:] if not line.startswith("  ")]
    assert lines[0].startswith("submitted ") and statuses[-1] == "COMPLETED", lines
    assert any(line.startswith("  greeting page") for line in lines), lines  # a log line
