"""Bad input and broken apps: clear errors, the right gRPC status, a server that goes on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from falrt.client import Completed, Queued, SyncClient, connection
from falrt.v1 import control_pb2, control_pb2_grpc
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.sources import BROKEN_SETUP

pytestmark = pytest.mark.e2e


def deploy_source(server: ServerProcess, tmp_path: Path, module: str, source: str,
                  class_name: str) -> str:
    """Writes an app file and deploys it with the CLI; its endpoint id."""
    app_file = tmp_path / "app" / f"{module}.py"
    app_file.parent.mkdir()
    app_file.write_text(source)
    return server.deploy(f"{app_file}::{class_name}")


def served_by(server: ServerProcess, app_name: str) -> int:
    """How many requests the app's runners have served so far (a redeploy of the same
    source keeps its runner: the count goes on from earlier tests)."""
    from falrt.client.control import ControlClient

    with ControlClient(server.address) as control:
        return sum(runner.served for runner in control.list_runners(app_name))


def waiting_reason(client: SyncClient, request_id: str) -> str:
    """Waits until the queued request reports why it waits; that reason."""

    def reason() -> str:
        status = client.status(request_id)
        assert isinstance(status, Queued)
        return status.waiting_reason

    return wait_for(reason, what="a waiting reason")


def _bundle(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _deploy(address: str, bundle: bytes, *, sha256: str | None = None,
            app_name: str = "raw") -> list[control_pb2.DeployResponse]:
    header = control_pb2.DeployHeader(
        app_name=app_name, entrypoint="app:App", bundle_size=len(bundle),
        bundle_sha256=sha256 or hashlib.sha256(bundle).hexdigest(),
        endpoints=[control_pb2.EndpointSpec(path="/", name="run")],
    )

    def requests() -> Iterator[control_pb2.DeployRequest]:
        yield control_pb2.DeployRequest(header=header)
        yield control_pb2.DeployRequest(chunk=bundle)

    with connection.channel(address) as channel:
        return list(control_pb2_grpc.ControlStub(channel).Deploy(requests()))


@pytest.mark.parametrize(
    ("bundle", "sha256", "app_name", "reason"),
    [
        (_bundle({"app.py": b""}), "0" * 64, "raw", "SHA-256"),
        (_bundle({"../escape.py": b"x", "app.py": b""}), None, "raw", "escape"),
        (_bundle({"other.py": b""}), None, "raw", "app.py"),
        (b"not a tar archive", None, "raw", "gzipped tar"),
        (_bundle({"app.py": b""}), None, "Bad Name!", "app name"),
    ],
    ids=["hash mismatch", "path escape", "no module", "not a tar", "bad app name"],
)
def test_a_bad_deploy_is_invalid_argument_and_the_server_goes_on(
    server: ServerProcess, bundle: bytes, sha256: str | None, app_name: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        _deploy(server.address, bundle, sha256=sha256, app_name=app_name)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason.lower() in failed.value.details().lower()
    assert server.cli("apps", "list").returncode == 0


def test_a_failing_setup_keeps_requests_queued_and_says_why(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = deploy_source(server, tmp_path, "broken", BROKEN_SETUP, "Broken")
    with SyncClient(server.address) as client:
        request_id = client.submit(endpoint, {"x": 1}).request_id
        assert "the model file is missing" in waiting_reason(client, request_id)
        assert client.cancel(request_id) == "CANCELLATION_REQUESTED"
        final = client.wait(request_id, timeout=30)
        assert final.error is not None and final.error.error_type == "client_cancelled"


def test_cancel_answers_as_fal_does(server: ServerProcess, tmp_path: Path) -> None:
    endpoint = server.deploy("tests/apps/gated.py::Gated")
    gate = make_gate(tmp_path / "gate")
    with SyncClient(server.address) as client:
        running = client.submit(endpoint, {"text": "holds the slot", "gate": str(gate)})
        queued = client.submit(endpoint, {"text": "never runs"})
        assert client.cancel(queued.request_id) == "CANCELLATION_REQUESTED"
        cancelled = client.wait(queued.request_id, timeout=30)
        assert isinstance(cancelled, Completed) and cancelled.error is not None
        assert cancelled.error.error_type == "client_cancelled"
        assert client.cancel(queued.request_id) == "ALREADY_COMPLETED"
        assert client.cancel("no-such-request") == "NOT_FOUND"
        release(gate)
        assert client.wait(running.request_id, timeout=60).output["text"] == "holds the slot"
        logs = client.status(queued.request_id, with_logs=True)
        assert isinstance(logs, Completed) and not logs.logs  # it never ran


SLOW_SETUP = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    x: int

class Stuck(falrt.App):
    app_name = "stuck"
    startup_timeout = 1

    def setup(self) -> None:
        with open({gate!r}, "rb") as gate:  # nobody ever writes: setup never ends
            gate.read(1)

    @falrt.endpoint("/")
    def run(self, request: Input) -> Input:
        return request
'''


def test_a_setup_past_startup_timeout_is_killed_and_reported(
    server: ServerProcess, tmp_path: Path
) -> None:
    gate = make_gate(tmp_path / "never")
    source = SLOW_SETUP.format(gate=str(gate))
    endpoint = deploy_source(server, tmp_path, "stuck", source, "Stuck")
    with SyncClient(server.address) as client:
        request_id = client.submit(endpoint, {"x": 1}).request_id
        text = waiting_reason(client, request_id)
        assert "setup did not finish within 1 s (startup_timeout)" in text
        # The stuck process is gone; its runner waits out the crash backoff to start again.
        runners = json.loads(
            server.cli("runners", "list", "--app", "stuck", "--output", "json").stdout)
        assert [r["state"] for r in runners] == ["crash_backoff"]
        assert "startup_timeout" in runners[0]["last_error"]
        states = [t["state"] for t in runners[0]["transitions"]]
        assert states == ["pending", "setup", "crash_backoff"]
        client.cancel(request_id)


def test_a_server_that_cannot_start_says_why(server: ServerProcess, tmp_path: Path) -> None:
    import subprocess

    from tests.harness import FALRT

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FALRT, "server", "--data-dir", str(tmp_path / "d"), *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})

    taken = start("--listen", server.address)
    assert taken.returncode != 0 and f"cannot listen on {server.address}" in taken.stderr
    unknown = start("--listen", "127.0.0.1:0", "--store", "mongo")
    assert unknown.returncode != 0 and "unknown store 'mongo'" in unknown.stderr
    refused = start("--listen", "127.0.0.1:0", "--store", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert refused.returncode != 0 and "cannot open the PostgreSQL database" in refused.stderr
    assert "hunter2" not in refused.stderr  # the DSN's password is never printed
    bad_key = start("--listen", "127.0.0.1:0", env={"FALRT_SECRETS_KEY": "hunter2-not-a-key"})
    assert bad_key.returncode != 0
    assert "the secrets key in FALRT_SECRETS_KEY is not valid" in bad_key.stderr
    assert "hunter2" not in bad_key.stderr  # nor is the key
    open_link = start("--listen", "127.0.0.1:0", "--runner-link", "stream",
                      "--runner-link-listen", "0.0.0.0:0")
    assert open_link.returncode != 0 and "--runner-link stream:" in open_link.stderr
    assert "Traceback" not in (taken.stderr + unknown.stderr + refused.stderr + bad_key.stderr
                               + open_link.stderr)


def test_an_app_with_its_own_dockerfile_needs_the_docker_backend(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = BROKEN_SETUP.replace('app_name = "broken"',
                                  'app_name = "boxed"\n    dockerfile = "FROM debian"')
    app_file = tmp_path / "boxed.py"
    app_file.write_text(source)
    result = server.cli("deploy", f"{app_file}::Broken", check=False)
    assert result.returncode != 0 and "needs" not in result.stdout
    assert "deploy it to a server with the docker backend" in result.stderr


NOISY = '''
import sys
import time
from typing import Any

import msgspec
import falrt


class In(msgspec.Struct):
    mode: str
    extra: Any = None


class Out(msgspec.Struct):
    mode: str


class Noisy(falrt.App):
    app_name = "noisy"
    max_multiplexing = 2
    max_concurrency = 1

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        if request.mode == "endless":  # 70 MB on one line, with no newline
            for _ in range(70):
                sys.stdout.write("x" * 1_000_000)
        elif request.mode == "many":  # 12 MB of log lines
            for _ in range(200):
                print("y" * 60_000)
        elif request.mode == "huge":  # a 70 MB output
            return Out("h" * 70_000_000)
        else:
            time.sleep(0.5)  # a neighbour running on the same runner meanwhile
            print("quiet")
        return Out(request.mode)
'''


def test_a_handlers_endless_output_fails_nothing_and_its_log_is_cut(
    server: ServerProcess, tmp_path: Path
) -> None:
    from falrt.client.control import ControlClient
    from falrt.limits import LOG_BYTES, LOG_LINE_BYTES

    endpoint = deploy_source(server, tmp_path, "noisy", NOISY, "Noisy")
    before = served_by(server, "noisy")
    with SyncClient(server.address) as client:
        neighbour = client.submit(endpoint, {"mode": "quiet"})
        endless = client.submit(endpoint, {"mode": "endless"})
        many = client.submit(endpoint, {"mode": "many"})
        outputs = [h.get() for h in (neighbour, endless, many)]
        assert outputs == [{"mode": "quiet"}, {"mode": "endless"}, {"mode": "many"}]
        logs = {h.request_id: client.status(h.request_id, with_logs=True)
                for h in (neighbour, endless, many)}
    assert all(isinstance(s, Completed) for s in logs.values())
    assert [line.message for line in logs[neighbour.request_id].logs] == ["quiet"]
    [cut] = logs[endless.request_id].logs
    assert len(cut.message.encode()) <= LOG_LINE_BYTES
    assert cut.message.endswith("it had 70000000]")
    many_logs = logs[many.request_id].logs
    assert sum(len(line.message.encode()) for line in many_logs) <= LOG_BYTES + 200
    assert "reached its limit" in many_logs[-1].message
    with ControlClient(server.address) as control:
        [runner] = control.list_runners("noisy")
    assert runner.served - before == 3 and not runner.last_error  # one runner, all three once


@pytest.fixture
def inline_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with payloads by reference off (--payload-ref-bytes 0): every payload
    travels inline, so the 64 MiB message limit bounds it (docs/files.md)."""
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                         extra=["--payload-ref-bytes", "0"]).start()
    yield proc
    stop_cleanly(proc)


def test_an_oversized_output_or_input_fails_only_its_own_request(
    inline_server: ServerProcess, tmp_path: Path
) -> None:
    from falrt import errors
    from falrt.client.control import ControlClient

    server = inline_server
    endpoint = deploy_source(server, tmp_path, "noisy", NOISY, "Noisy")
    before = served_by(server, "noisy")
    with SyncClient(server.address) as client:
        client.payload_ref_bytes = 0  # (the client's inputs inline too)
        with pytest.raises(errors.PayloadTooLargeError, match="the input is 67100011 bytes"):
            client.submit(endpoint, {"mode": "x" * 67_100_000})  # acknowledged before
        neighbour = client.submit(endpoint, {"mode": "quiet"})
        huge = client.submit(endpoint, {"mode": "huge"})
        with pytest.raises(errors.PayloadTooLargeError, match="the output is 70000011 bytes"):
            huge.get()
        assert neighbour.get() == {"mode": "quiet"}
        assert client.run(endpoint, {"mode": "quiet"}) == {"mode": "quiet"}  # it serves on
        status = huge.status()
    assert isinstance(status, Completed) and status.error is not None
    assert status.error.error_type == "payload_too_large"
    with ControlClient(server.address) as control:
        [runner] = control.list_runners("noisy")
    assert runner.served - before == 3 and not runner.last_error  # one runner, each once


def test_a_small_bundle_with_a_huge_header_is_refused_without_the_server_reading_it(
    fresh_server: ServerProcess,
) -> None:
    from tests.test_bundle import huge_header_bundle

    bundle = huge_header_bundle(tarfile.XHDTYPE, 1024**3)  # a 1 GiB PAX header
    assert len(bundle) < 8 * 1024 * 1024  # (about 4.5 MB)
    with pytest.raises(grpc.RpcError) as refused:
        _deploy(fresh_server.address, bundle)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "once decompressed" in refused.value.details()
    assert fresh_server.proc is not None
    status = Path(f"/proc/{fresh_server.proc.pid}/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:"))
                   .split()[1])
    # It read no more than the 256 MiB a bundle may have (it read it all before: over 2 GiB).
    assert peak_kib < 800 * 1024, f"the server's peak memory was {peak_kib} KiB"
    with SyncClient(fresh_server.address) as client:  # and it serves on
        assert client.run(fresh_server.deploy("examples/hello.py::Hello"),
                          {"name": "after"}) == {"greeting": "Hello, after!"}


def test_an_input_nested_100000_levels_deep_is_a_bad_request_naming_the_limit(
    server: ServerProcess, tmp_path: Path
) -> None:
    from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

    endpoint = deploy_source(server, tmp_path, "noisy", NOISY, "Noisy")
    nested = b'{"mode": "quiet", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Run(queue_pb2.RunRequest(endpoint_id=endpoint,
                                          input=common_pb2.Payload(data=nested)))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nested too deeply" in refused.value.details()
    with SyncClient(server.address) as client:
        assert client.run(endpoint, {"mode": "quiet"}) == {"mode": "quiet"}


def _write_broken(tmp_path: Path) -> str:
    """BROKEN_SETUP as a file; its FILE::CLASS."""
    return _write_source(tmp_path, BROKEN_SETUP)


def _write_source(tmp_path: Path, source: str) -> str:
    """A variant of BROKEN_SETUP as a file; its FILE::CLASS."""
    app_file = tmp_path / "broken_app" / "broken.py"
    app_file.parent.mkdir()
    app_file.write_text(source)
    return f"{app_file}::Broken"


def test_deploy_wait_exits_5_with_the_startup_error_of_a_failing_setup(
    server: ServerProcess, tmp_path: Path
) -> None:
    deployed = server.cli("deploy", _write_broken(tmp_path), "--app-name", "broken-wait",
                          "--wait", check=False, timeout=120)
    assert deployed.returncode == 5, deployed.stderr
    assert "RuntimeError: the model file is missing" in deployed.stderr
    assert "falrt runners logs" in deployed.stderr


def test_a_plain_deploy_of_an_app_kept_warm_reports_its_failing_setup(
    server: ServerProcess, tmp_path: Path
) -> None:
    """min_concurrency > 0 starts runners at deploy: the deploy waits for the first one
    without --wait, and fails with its startup error."""
    source = BROKEN_SETUP.replace('app_name = "broken"', 'app_name = "broken-warm"\n'
                                  '    min_concurrency = 1')
    deployed = server.cli("deploy", _write_source(tmp_path, source), check=False, timeout=120)
    assert deployed.returncode == 5, deployed.stderr
    assert "RuntimeError: the model file is missing" in deployed.stderr


def test_deploy_wait_returns_once_a_runner_is_ready(server: ServerProcess) -> None:
    deployed = server.cli("deploy", "examples/hello.py::Hello", "--app-name", "hello-wait",
                          "--wait")
    assert deployed.stdout.strip().endswith("/hello-wait")
    runners = json.loads(
        server.cli("runners", "list", "--app", "hello-wait", "--output", "json").stdout)
    assert [r["state"] for r in runners] == ["idle"]


def test_a_queued_call_shows_why_its_request_waits(server: ServerProcess, tmp_path: Path) -> None:
    endpoint = server.deploy(_write_broken(tmp_path), "--app-name", "broken-queued")
    called = server.cli("call", endpoint, "--data", '{"x": 1}', "--timeout", "15", check=False)
    assert called.returncode != 0
    assert "in queue, position 0 (runners of broken-queued fail to start" in called.stderr
    assert "RuntimeError: the model file is missing" in called.stderr


def test_a_direct_call_to_an_app_whose_setup_fails_answers_with_the_startup_error(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = server.deploy(_write_broken(tmp_path), "--app-name", "broken-direct")
    for _ in range(2):  # while the first runner starts, then while the app backs off
        called = server.cli("call", endpoint, "--sync", "--data", '{"x": 1}', "--timeout", "60",
                            check=False, timeout=50)
        assert called.returncode == 5, called.stderr
        assert "startup_failed" in called.stderr and "Deadline Exceeded" not in called.stderr
        assert "RuntimeError: the model file is missing" in called.stderr


def test_a_queued_call_with_invalid_input_says_failed_not_completed(
    server: ServerProcess,
) -> None:
    endpoint = server.deploy("examples/hello.py::Hello", "--app-name", "hello-invalid")
    called = server.cli("call", endpoint, "--data", '{"nom": 1}', check=False)
    assert called.returncode == 4, called.stderr
    assert "completed" not in called.stderr
    assert "failed" in called.stderr
