"""Unhealthy runners are replaced: a failing health check, a GPU failure in a handler."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import falrt
from falrt.client import SyncClient
from falrt.client.control import ControlClient
from falrt.v1 import common_pb2
from shim.gpu_errors import is_gpu_failure
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

TERMINATED = common_pb2.RUNNER_STATE_TERMINATED

HEALTH_APP = '''
import os
from pathlib import Path

import msgspec
import falrt

SICK = {sick!r}  # a runner whose id is a file in this directory fails its health check


class In(msgspec.Struct):
    gate: str = ""


class Out(msgspec.Struct):
    runner: str


class Probe(msgspec.Struct):
    pass


class Healthy(falrt.App):
    app_name = "healthy"
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        return Out(runner=os.environ["FALRT_RUNNER_ID"])

    @falrt.endpoint("/health", health_check=falrt.HealthCheck(
        start_period_seconds=0, timeout_seconds=1, failure_threshold=2, period_seconds=0.1))
    def health(self, probe: Probe) -> Probe:
        if Path(SICK, os.environ["FALRT_RUNNER_ID"]).exists():
            raise RuntimeError("the model is gone")
        return probe
'''

GPU_APP = '''
import os
from pathlib import Path

import msgspec
import falrt

MARKER = {marker!r}


class In(msgspec.Struct):
    n: int


class Out(msgspec.Struct):
    n: int
    runner: str


class FlakyGpu(falrt.App):
    app_name = "flaky-gpu"
    max_concurrency = 2
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        if not Path(MARKER).exists():
            Path(MARKER).touch()
            raise RuntimeError("CUDA error: out of memory (tried to allocate 2.00 GiB)")
        return Out(n=request.n, runner=os.environ["FALRT_RUNNER_ID"])
'''


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                         extra=["--retry-backoff", "0.05"]).start()
    yield proc
    stop_cleanly(proc)


def deploy(server: ServerProcess, tmp_path: Path, source: str, name: str) -> str:
    app_file = tmp_path / f"{name}.py"
    app_file.write_text(source)
    return server.deploy(str(app_file))


def ended(control: ControlClient, app: str, runner_id: str) -> str | None:
    """The last error of `runner_id` once it is TERMINATED."""
    for runner in control.list_runners(app, [TERMINATED]):
        if runner.runner_id == runner_id:
            return runner.last_error or "(none)"
    return None


def test_a_runner_failing_its_health_check_is_replaced_and_its_request_retried(
    server: ServerProcess, tmp_path: Path
) -> None:
    sick = tmp_path / "sick"
    sick.mkdir()
    endpoint = deploy(server, tmp_path, HEALTH_APP.format(sick=str(sick)), "healthy")
    gate = make_gate(tmp_path / "gate")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        first = client.wait(client.submit(endpoint, {}).request_id, timeout=60).output["runner"]
        held = client.submit(endpoint, {"gate": str(gate)}).request_id
        wait_for(lambda: any(held in r.in_flight_request_ids for r in control.list_runners()),
                 what="the request running")
        (sick / first).touch()  # two failed probes in a row: the runner stops
        error = wait_for(lambda: ended(control, "healthy", first), what="the sick runner gone")
        assert "exit status 5" in error and "health check failed 2 times" in error
        release(gate)  # the retry runs on the replacement
        done = client.wait(held, timeout=60)
        assert done.error is None and done.output["runner"] != first
    log = server.cli("runners", "logs", first).stdout
    assert "RuntimeError: the model is gone" in log


def test_a_gpu_failure_stops_the_runner_and_retries_the_request_elsewhere(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = deploy(server, tmp_path, GPU_APP.format(marker=str(tmp_path / "failed")), "gpu")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        request_id = client.submit(endpoint, {"n": 4}).request_id
        done = client.wait(request_id, timeout=60)
        assert done.error is None and done.output["n"] == 4
        logs = client.status(request_id, with_logs=True).logs
        stopped = wait_for(lambda: control.list_runners("flaky-gpu", [TERMINATED]),
                           what="the runner that hit the GPU failure stopped")
    assert len(stopped) == 1 and "stop_runner" in stopped[0].last_error
    assert done.output["runner"] != stopped[0].runner_id
    # The shim said why, in the logs of the attempt (they stay with the request).
    assert any("hit a GPU failure" in line.message for line in logs), logs


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (its module must be torch's)."""


OutOfMemoryError.__module__ = "torch.cuda"


@pytest.mark.parametrize(("exc", "gpu"), [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"), True),
    (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp"), True),
    (OutOfMemoryError("tried to allocate 20.00 MiB"), True),
    (MemoryError("out of memory"), True),
    (ValueError("the prompt is empty"), False),
    (RuntimeError("could not decode the image"), False),
])
def test_gpu_failures_are_recognised_as_fal_recognises_them(exc: Exception, gpu: bool) -> None:
    assert is_gpu_failure(exc) is gpu


class Empty(msgspec.Struct):
    pass


class Needs(msgspec.Struct):
    x: int


def test_an_app_has_at_most_one_health_check_and_it_takes_an_empty_input() -> None:
    check = falrt.HealthCheck(start_period_seconds=0)
    with pytest.raises(TypeError, match="only one endpoint may be the health check"):
        class Twice(falrt.App):
            @falrt.endpoint("/a", health_check=check)
            def a(self, probe: Empty) -> Empty:
                return probe

            @falrt.endpoint("/b", health_check=check)
            def b(self, probe: Empty) -> Empty:
                return probe

    with pytest.raises(TypeError, match="every field of its input must have a default"):
        class Strict(falrt.App):
            @falrt.endpoint("/health", health_check=check)
            def health(self, probe: Needs) -> Needs:
                return probe

    with pytest.raises(ValueError, match="failure_threshold"):
        falrt.HealthCheck(failure_threshold=0)
    assert json.dumps(msgspec.to_builtins(check))  # a plain value: it can be described
