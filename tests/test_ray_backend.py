"""The ray backend on a real multi-node Ray cluster on this machine (tests/raycluster.py).

The cluster: a head with no CPUs and three worker nodes, `s1` and `s2` with `falrt-S: 2`
(2 CPUs each) and `xs` with `falrt-XS: 1` only. One `falrt server --backend ray` on it. Each
test deploys the app it needs under its own name, so runner counts are its own.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from falrt.client import Completed, InProgress, SyncClient, connection
from falrt.client.control import ControlClient
from falrt.dev_certs import make
from falrt.v1 import common_pb2, runner_pb2, runner_pb2_grpc
from falrt.vocabulary import CancelOutcome
from tests.harness import LEAK_GRACE_S, REPO, ServerProcess, stop_cleanly, wait_for

pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.ray]

APP = str(REPO / "tests" / "apps" / "placed.py") + "::Placed"
NODES = {
    "s1": {"num_cpus": 2, "resources": {"falrt-S": 2}},
    "s2": {"num_cpus": 2, "resources": {"falrt-S": 2}},
    "xs": {"num_cpus": 1, "resources": {"falrt-XS": 1}},
}
HEARTBEAT_WINDOW_S = 5.0  # the shim's default FALRT_HEARTBEAT_S


class RayCluster:
    """The helper process of tests/raycluster.py: its address, its nodes' ids, commands."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._pump, daemon=True).start()
        started = json.loads(self._next(120))
        self.address: str = started["address"]
        self.client_address: str = started["client"]
        self.node_ids: dict[str, str] = started["nodes"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def _next(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the Ray cluster said nothing in {timeout} s") from None

    def name_of(self, node: str) -> str:
        """The name of the node a runner list shows (host/node id prefix)."""
        prefix = node.rpartition("/")[2]
        (name,) = [n for n, node_id in self.node_ids.items() if node_id.startswith(prefix)]
        return name

    def add(self, name: str, spec: dict[str, Any]) -> None:
        """Adds a node (a lost machine back, under a new node id)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"add {name} {json.dumps(spec)}\n")
        self.proc.stdin.flush()
        added = self._next(60).split()
        assert added[:2] == ["added", name], added
        self.node_ids[name] = added[2]

    def kill_head(self) -> None:
        """SIGKILLs the head's GCS: the cluster's state is gone."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("kill-head\n")
        self.proc.stdin.flush()
        assert self._next(30).strip() == "killed head"

    def kill(self, name: str) -> None:
        """SIGKILLs the node's raylet (its workers go with it)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"kill {name}\n")
        self.proc.stdin.flush()
        assert self._next(30).strip() == f"killed {name}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.raycluster", json.dumps(NODES)], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield RayCluster(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the helper shuts the cluster down, every process by its pid
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


@pytest.fixture(scope="module")
def server(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerProcess]:
    root = tmp_path_factory.mktemp("ray-server")
    proc = ServerProcess(root / "data", root / "server.log", extra=[
        "--backend", "ray", "--ray-address", cluster.address]).start(timeout=60)
    yield proc
    stop_cleanly(proc)
    # Its runners are Ray actors' children, not its own: they end with its Ray job.
    wait_for(lambda: not shims_of(proc.address), timeout=LEAK_GRACE_S,
             what=f"the runners of {proc.address} to end")


def shims_of(address: str) -> list[int]:
    """Pids of the runner processes that dial `address` (FALRT_SERVER in their environment)."""
    needle = f"FALRT_SERVER={address}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> SyncClient:
    return SyncClient(server.address)


@pytest.fixture
def apps(server: ServerProcess) -> Iterator[list[str]]:
    """The names of the apps a test deploys: deleted after it (their runners stop), so that
    the next test finds every node's `falrt-S` free."""
    names: list[str] = []
    yield names
    for name in names:
        server.cli("apps", "delete", name)
    wait_for(lambda: not [r for name in names for r in runners(server, name)
                          if r["state"] != "terminated"], timeout=60, what="runners to end")


def runners(server: ServerProcess, app: str) -> list[dict[str, Any]]:
    listed = json.loads(server.cli("runners", "list", "--output", "json").stdout)
    return [r for r in listed if r["app_name"] == app]


def node_of(server: ServerProcess, app: str, runner_id: str) -> str:
    def placed() -> str:
        return next((r["node"] for r in runners(server, app) if r["runner_id"] == runner_id), "")

    return wait_for(placed, what=f"runner {runner_id}'s node")


def test_runners_land_only_on_nodes_with_their_machine_types_resource(
    server: ServerProcess, client: SyncClient, cluster: RayCluster, apps: list[str]
) -> None:
    apps.append("placed-a")
    endpoint = server.deploy(APP, "--app-name", "placed-a")
    queued = client.wait(client.submit(endpoint, {}).request_id, timeout=120).output_or_raise()
    direct = client.run(endpoint, {}, timeout=60)
    for output in (queued, direct):
        node = node_of(server, "placed-a", output["runner"])
        assert cluster.name_of(node) in ("s1", "s2"), node
        # The bundle came from the server into the node's cache, not the server's disk.
        assert str(server.data_dir) not in output["bundle_dir"]
        assert output["cuda_visible_devices"] == ""  # a CPU type: no GPU, as Ray assigned


def test_a_machine_type_no_node_has_waits_with_no_capacity(
    server: ServerProcess, client: SyncClient, apps: list[str]
) -> None:
    apps.append("placed-gpu")
    endpoint = server.deploy(APP, "--app-name", "placed-gpu")
    server.cli("apps", "scale", "placed-gpu", "--machine-types", "GPU-H100")
    request_id = client.submit(endpoint, {}).request_id

    def reason() -> str:
        status = client.status(request_id)
        return getattr(status, "waiting_reason", "")

    assert "no capacity for GPU-H100" in wait_for(reason, what="a waiting reason")
    assert not runners(server, "placed-gpu")
    client.cancel(request_id)


def test_a_runner_with_no_room_yet_waits_for_ray_and_ends_when_stopped(
    server: ServerProcess, cluster: RayCluster, apps: list[str]
) -> None:
    """Node xs has room for one XS runner: a second one is not refused (Ray places it when
    room frees up), and is removed from Ray's queue when it is stopped (the fixture's
    teardown deletes the app and waits for every runner to end)."""
    apps.append("placed-xs")
    server.deploy(APP, "--app-name", "placed-xs")
    server.cli("apps", "scale", "placed-xs", "--machine-types", "XS", "--min-concurrency", "2")

    def both() -> list[dict[str, Any]]:
        listed = [r for r in runners(server, "placed-xs") if r["state"] in ("idle", "setup")]
        return listed if len(listed) == 2 and any(r["state"] == "idle" for r in listed) else []

    placed, waiting = sorted(wait_for(both, timeout=60, what="2 runners"),
                             key=lambda r: r["state"] != "idle")
    assert cluster.name_of(placed["node"]) == "xs"
    assert waiting["node"] == "" and waiting["last_error"] == ""


def test_a_stream_and_a_cancel_work_on_ray_runners(
    server: ServerProcess, client: SyncClient, apps: list[str]
) -> None:
    apps.append("placed-b")
    endpoint = server.deploy(APP, "--app-name", "placed-b")
    parts = list(client.stream(endpoint, {"count": 3}, path="/stream", timeout=120))
    assert [p["index"] for p in parts] == [0, 1, 2]
    handle = client.submit(endpoint, {}, path="/wait")
    wait_for(lambda: isinstance(client.status(handle.request_id), InProgress), timeout=60,
             what="the waiting request to run")
    assert client.cancel(handle.request_id) == CancelOutcome.CANCELLATION_REQUESTED
    done = client.wait(handle.request_id, timeout=60)
    assert done.error is not None
    assert client.run(endpoint, {}, timeout=60)["version"] == "1"  # the runner still serves


def test_a_burst_of_60_requests_runs_on_at_most_max_concurrency_runners(
    server: ServerProcess, client: SyncClient, apps: list[str]
) -> None:
    apps.append("placed-d")
    endpoint = server.deploy(APP, "--app-name", "placed-d")
    handles = [client.submit(endpoint, {"sleep_s": 0.05}) for _ in range(60)]
    peak = 0
    with ControlClient(server.address) as control:
        for handle in handles:  # (the runners sampled while the burst drains)
            alive = [r for r in control.list_runners("placed-d")
                     if r.state != common_pb2.RUNNER_STATE_TERMINATED]
            peak = max(peak, len(alive))
            assert isinstance(client.wait(handle.request_id, timeout=180), Completed)
    served_by = {client.result(h.request_id)["runner"] for h in handles}
    assert len(served_by) <= 4 and peak <= 4
    assert len(runners(server, "placed-d")) <= 4  # none started and ended meanwhile


def test_a_rolling_deploy_switches_to_the_new_revision(
    server: ServerProcess, client: SyncClient, tmp_path: Path, apps: list[str]
) -> None:
    apps.append("placed-e")
    source = (REPO / "tests" / "apps" / "placed.py").read_text()
    app_file = tmp_path / "placed.py"
    app_file.write_text(source)
    endpoint = server.deploy(f"{app_file}::Placed", "--app-name", "placed-e")
    assert client.run(endpoint, {}, timeout=120)["version"] == "1"
    app_file.write_text(source.replace('VERSION = "1"', 'VERSION = "2"'))
    server.cli("deploy", f"{app_file}::Placed", "--app-name", "placed-e", "--strategy",
               "rolling")
    assert client.run(endpoint, {}, timeout=120)["version"] == "2"


def test_a_bundle_is_fetched_only_with_a_live_runners_id_and_token(
    server: ServerProcess, apps: list[str]
) -> None:
    apps.append("placed-fetch")
    server.deploy(APP, "--app-name", "placed-fetch")
    with connection.channel(server.address) as channel:
        stub = runner_pb2_grpc.RunnerLinkStub(channel)
        for runner_id, token in (("r-nobody", "x"), ("", "")):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.FetchBundle(runner_pb2.FetchBundleRequest(runner_id=runner_id,
                                                                    token=token)))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_server_reaches_the_cluster_through_ray_client(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """`--ray-address ray://HOST:PORT`: the server is a Ray Client, not on a Ray node."""
    other = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=[
        "--backend", "ray", "--ray-address", cluster.client_address]).start(timeout=60)
    try:
        endpoint = other.deploy(APP, "--app-name", "placed-client")
        with SyncClient(other.address) as client:
            output = client.run(endpoint, {}, timeout=120)
        assert cluster.name_of(node_of(other, "placed-client", output["runner"])) in ("s1", "s2")
    finally:
        stop_cleanly(other)
    wait_for(lambda: not shims_of(other.address), timeout=LEAK_GRACE_S,
             what="the Ray Client server's runners to end")


def test_under_mutual_tls_a_ray_runner_fetches_its_bundle_and_serves(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """The node's bundle fetch and the shim dial a mutual-TLS server with the runner
    certificate the server hands out, as process runners do."""
    certs = make(tmp_path / "certs")
    ca = ["--tls-ca", str(certs.path("ca.pem"))]
    cert, key = certs.path("client.pem"), certs.path("client.key")
    other = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=[
        "--tls-cert", str(certs.path("server.pem")), "--tls-key", str(certs.path("server.key")),
        "--tls-client-ca", str(certs.path("ca.pem")),
        "--tls-runner-cert", str(certs.path("runner.pem")),
        "--tls-runner-key", str(certs.path("runner.key")),
        "--backend", "ray", "--ray-address", cluster.address]).start(timeout=60)
    try:
        host = f"https://{other.address}"
        other.cli("deploy", APP, "--app-name", "placed-tls", "--host", host, *ca,
                  "--tls-client-cert", str(cert), "--tls-client-key", str(key))
        with SyncClient(host, tls_ca=certs.path("ca.pem"), tls_client_cert=cert,
                        tls_client_key=key) as client:
            assert client.run("local/placed-tls", {}, timeout=120)["version"] == "1"
    finally:
        stop_cleanly(other)
    wait_for(lambda: not shims_of(other.address), timeout=LEAK_GRACE_S,
             what="the TLS server's runners to end")


def test_a_killed_servers_ray_runners_end_and_its_restart_reruns_their_request(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """A server SIGKILLed while its Ray runner serves a request: Ray ends the runners of
    the dead server's job (their shims go, their resources free up, so a restarted server
    fills every node's `falrt-S` with its own runners), none of them attaches to the server
    restarted on the same data directory and port, and that server runs the request
    again to completion on a runner of its own."""
    listen = f"127.0.0.1:{_free_port()}"
    extra = ["--backend", "ray", "--ray-address", cluster.address]
    first = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=extra,
                          listen=listen).start(timeout=60)
    endpoint = first.deploy(APP, "--app-name", "placed-k")
    started = tmp_path / "started"
    with SyncClient(first.address) as client:
        handle = client.submit(endpoint, {"sleep_s": 4, "started": str(started)})
    old = wait_for(lambda: started.read_text() if started.exists() else "", timeout=120,
                   what="the request to start")
    assert shims_of(first.address)
    first.kill()
    wait_for(lambda: not shims_of(first.address), timeout=30,
             what="the dead server's runners to end")
    second = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=extra,
                           listen=listen).start(timeout=60)
    try:
        with SyncClient(second.address) as client:
            output = client.wait(handle.request_id, timeout=120).output_or_raise()
        assert output["runner"] != old
        second.cli("apps", "scale", "placed-k", "--min-concurrency", "4")

        def idle() -> list[str]:
            listed = [r["runner_id"] for r in runners(second, "placed-k")
                      if r["state"] == "idle"]
            return listed if len(listed) == 4 else []

        assert old not in wait_for(idle, timeout=90, what="4 idle runners: all of falrt-S")
        assert len(shims_of(second.address)) == 4
    finally:
        stop_cleanly(second)
    wait_for(lambda: not shims_of(second.address), timeout=LEAK_GRACE_S,
             what="the restarted server's runners to end")


def _free_port() -> int:
    """A port no one listens on now (a restarted server takes it again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_lost_node_loses_no_queued_request_and_its_runner_is_replaced_elsewhere(
    server: ServerProcess, client: SyncClient, cluster: RayCluster, tmp_path: Path,
    apps: list[str],
) -> None:
    """Last but one: it kills a node for good. A request runs on the node and more wait
    when its raylet is killed: the lost runner is reported within the runner link's
    heartbeat window, and every acknowledged request completes, the one cut short on a
    runner of the surviving node."""
    apps.append("placed-c")
    endpoint = server.deploy(APP, "--app-name", "placed-c")
    started = tmp_path / "started"
    handle = client.submit(endpoint, {"sleep_s": 5, "started": str(started)})
    first = wait_for(lambda: started.read_text() if started.exists() else "", timeout=120,
                     what="the request to start")
    lost = cluster.name_of(node_of(server, "placed-c", first))
    others = [client.submit(endpoint, {"sleep_s": 0.5}) for _ in range(6)]
    with ControlClient(server.address) as control:
        cluster.kill(lost)
        killed_at = time.monotonic()
        wait_for(lambda: first not in {r.runner_id for r in control.list_runners("placed-c")},
                 timeout=HEARTBEAT_WINDOW_S, what=f"runner {first} to be reported lost")
    assert time.monotonic() - killed_at < HEARTBEAT_WINDOW_S
    output = client.wait(handle.request_id, timeout=120).output_or_raise()
    assert output["runner"] != first
    survivor = cluster.name_of(node_of(server, "placed-c", output["runner"]))
    assert survivor in ("s1", "s2") and survivor != lost
    for other in others:
        assert client.wait(other.request_id, timeout=120).output_or_raise()["runner"] != first


def test_a_node_that_comes_back_is_used_again(
    server: ServerProcess, cluster: RayCluster, apps: list[str]
) -> None:
    """After the node loss above: a node with the lost node's resources joins, and runners
    that no longer fit on the survivor go there."""
    cluster.add("back", NODES["s1"])
    apps.append("placed-f")
    server.deploy(APP, "--app-name", "placed-f")
    server.cli("apps", "scale", "placed-f", "--min-concurrency", "4")

    def nodes() -> set[str]:
        placed = [r["node"] for r in runners(server, "placed-f") if r["state"] == "idle"]
        return set(map(cluster.name_of, placed)) if len(placed) == 4 else set()

    assert "back" in wait_for(nodes, timeout=90, what="4 idle runners")
