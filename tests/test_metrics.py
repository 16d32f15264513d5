"""Metrics and health on a real server: a real Prometheus scrapes `falrt server`'s
`--metrics-listen` every 0.5 s while the test puts a short load on it, and PromQL answers
what the test saw through falrt's own API; per-app health (gRPC and `/healthz`) follows an
app whose setup fails.

Prometheus is Debian's package (scripts/prometheus.sh installs it; `make test` passes its
path as FALRT_TEST_PROMETHEUS). Each test's Prometheus has its own port, configuration and
storage directory, and is stopped at the end.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from falrt.client import Completed, Queued, SyncClient
from falrt.client.control import ControlClient
from falrt.server.metrics import TIME_BUCKETS
from falrt.v1 import common_pb2
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.sources import BROKEN_SETUP

pytestmark = pytest.mark.e2e

METRICS = re.compile(r"falrt metrics listening on (\S+)")
HTTP = re.compile(r"falrt http listening on (\S+)")
LOAD = 20  # queued requests: one runs held at a gate, the others wait behind it
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def prometheus_binary() -> str:
    found = os.environ.get("FALRT_TEST_PROMETHEUS") or shutil.which("prometheus")
    if not found:
        raise AssertionError("no prometheus binary: run scripts/prometheus.sh (make test does)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A real Prometheus scraping one target every 0.5 s; `query` runs PromQL."""

    def __init__(self, target: str, workdir: Path) -> None:
        workdir.mkdir()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
            "scrape_configs:\n  - job_name: falrt\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdout=log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)
        wait_for(self._ready, timeout=60, what="Prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()}")
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = self.http.get("/api/v1/query", params={"query": promql})
        reply.raise_for_status()
        body = reply.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a query with one series (None while it has none)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def until(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Waits until the query's one value is `expected` (new scrapes come every 0.5 s)."""
        wait_for(lambda: self.scalar(promql) == expected, timeout=timeout,
                 what=f"{promql} == {expected} (last: {self.scalar(promql)})")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[ServerProcess, Prometheus]]:
    """A server with a metrics listener, and a Prometheus scraping it."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--metrics-listen", "127.0.0.1:0"]).start()
    prometheus = None
    try:
        target = server.wait_for_output(METRICS).group(1)
        prometheus = Prometheus(target, tmp_path / "prometheus")
        yield server, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_cleanly(server)


def bucket_floor(seconds: float) -> float:
    """The lower bound of the histogram bucket holding `seconds`."""
    return max((b for b in TIME_BUCKETS if b < seconds), default=0.0)


def bucket_ceiling(seconds: float) -> float:
    """The upper bound of the histogram bucket holding `seconds`."""
    return min((b for b in TIME_BUCKETS if b >= seconds), default=math.inf)


def test_prometheus_reads_the_request_count_queue_wait_depth_and_runners_the_api_shows(
    watched: tuple[ServerProcess, Prometheus], tmp_path: Path
) -> None:
    server, prometheus = watched
    endpoint = server.deploy("tests/apps/gated.py::Gated")  # one runner, one slot
    gate = make_gate(tmp_path / "gate")
    app = '{app="gated"}'
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        started = time.monotonic()
        first = client.submit(endpoint, {"text": "held", "gate": str(gate)})
        wait_for(lambda: not isinstance(client.status(first.request_id), Queued),
                 what="the held request running")
        waiting = [client.submit(endpoint, {"text": f"r{i}"}) for i in range(LOAD - 1)]
        queued_at = time.monotonic()
        # What falrt's API says: every other request waits, behind one runner.
        statuses = [client.status(h.request_id) for h in waiting]
        depth = sum(isinstance(s, Queued) for s in statuses)
        assert depth == LOAD - 1
        alive = [r for r in control.list_runners("gated")
                 if r.state != common_pb2.RUNNER_STATE_TERMINATED]
        assert len(alive) == 1

        prometheus.until(f"sum(falrt_queue_depth{app})", depth)
        prometheus.until(f"sum(falrt_runners{app})", len(alive))
        prometheus.until(f'sum(falrt_slots_in_use{app})', 1)

        held_s = time.monotonic() - queued_at  # every waiting request waited at least this
        release(gate)
        for handle in [first, *waiting]:
            assert isinstance(client.wait(handle.request_id, timeout=60), Completed)
        elapsed = time.monotonic() - started

    prometheus.until('sum(falrt_requests_total{app="gated",kind="queue",outcome="ok"})',
                     LOAD)
    prometheus.until(f"sum(falrt_queue_wait_seconds_count{app})", LOAD)
    prometheus.until(f"sum(falrt_queue_depth{app})", 0)
    p50 = prometheus.scalar(
        f"histogram_quantile(0.5, sum by (le) (falrt_queue_wait_seconds_bucket{app}))")
    # 19 of the 20 requests waited at least held_s, so the median lies in that bucket or
    # a later one; none waited longer than the whole test, so it lies at most in the bucket
    # holding `elapsed` (histogram_quantile interpolates within a bucket: up to its top).
    assert p50 is not None and math.isfinite(p50)
    assert bucket_floor(held_s) <= p50 <= bucket_ceiling(elapsed), (held_s, p50, elapsed)
    assert prometheus.scalar(f"sum(falrt_cold_start_seconds_count{app})") == 1
    assert prometheus.scalar('sum(falrt_store_batch_size_count{store="sqlite"})') is not None


def health_of(address: str, service: str) -> int | grpc.StatusCode:
    """The gRPC health status of `service`, or the call's error code (NOT_FOUND)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
        return reply.status


def test_an_app_whose_setup_fails_is_not_serving_on_grpc_health_and_healthz(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--http-listen", "127.0.0.1:0",
                                  "--crash-backoff-step", "60"]).start()
    try:
        http = httpx.Client(base_url=f"http://{server.wait_for_output(HTTP).group(1)}",
                            trust_env=False, timeout=5.0)
        app_file = tmp_path / "app" / "broken.py"
        app_file.parent.mkdir()
        app_file.write_text(BROKEN_SETUP)
        broken = server.deploy(f"{app_file}::Broken")
        server.deploy("tests/apps/gated.py::Gated")
        # Before any start: both can start a runner, so both serve.
        assert health_of(server.address, "falrt.app/broken") == SERVING
        assert http.get("/healthz", params={"app": "gated"}).json()["status"] == "SERVING"

        with SyncClient(server.address) as client:
            client.submit(broken, {"x": 1})  # its runner's setup fails: crash backoff
            wait_for(lambda: health_of(server.address, "falrt.app/broken") == NOT_SERVING,
                     what="the broken app NOT_SERVING")
        reply = http.get("/healthz", params={"app": "broken"})
        assert reply.status_code == 503
        assert reply.json()["status"] == "NOT_SERVING" and reply.json()["problems"]
        # The server and the other app still serve.
        assert health_of(server.address, "") == SERVING
        assert health_of(server.address, "falrt.app/gated") == SERVING
        assert http.get("/healthz").json() == {"status": "SERVING"}

        with ControlClient(server.address) as control:
            control.delete_app("broken")
        assert health_of(server.address, "falrt.app/broken") is grpc.StatusCode.NOT_FOUND
        assert http.get("/healthz", params={"app": "broken"}).status_code == 404
        # /metrics is on --http-listen too, without a key.
        assert "falrt_runner_start_failures_total" in http.get("/metrics").text
        http.close()
    finally:
        stop_cleanly(server)


def test_with_no_metrics_metrics_answer_404_and_health_still_answers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--no-metrics", "--metrics-listen", "127.0.0.1:0"]).start()
    try:
        address = server.wait_for_output(METRICS).group(1)
        with httpx.Client(base_url=f"http://{address}", trust_env=False, timeout=5.0) as http:
            assert http.get("/metrics").status_code == 404
            assert http.get("/healthz").json() == {"status": "SERVING"}
        assert health_of(server.address, "") == SERVING
    finally:
        stop_cleanly(server)
