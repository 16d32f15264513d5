"""Runners live and scale as fal's do, on a real server with real runner subprocesses.

The runner transitions the server records (state and wall-clock time) are the evidence:
how many runners overlapped, how long each crash backoff lasted, how a stop went.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt.client import SyncClient
from falrt.client.control import ControlClient
from falrt.v1 import common_pb2, control_pb2
from tests.fifo import make_gate, release
from tests.harness import FALRT, ServerProcess, _env, stop_cleanly, wait_for
from tests.sources import BROKEN_SETUP
from tests.test_failures import waiting_reason

pytestmark = pytest.mark.e2e

APP = "tests/apps/lifecycle.py::Lifecycle"
TERMINATED = common_pb2.RUNNER_STATE_TERMINATED
IDLE = common_pb2.RUNNER_STATE_IDLE
CRASH_BACKOFF = common_pb2.RUNNER_STATE_CRASH_BACKOFF
PENDING = common_pb2.RUNNER_STATE_PENDING


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Retries after 50 ms; crash backoff in steps of 0.4 s up to 1.2 s (fal: 30 s, 10 min)."""
    root = tmp_path_factory.mktemp("lifecycle")
    proc = ServerProcess(root / "data", root / "server.log", extra=[
        "--retry-backoff", "0.05", "--crash-backoff-step", "0.4", "--crash-backoff-cap", "1.2",
    ]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture
def control(server: ServerProcess) -> Iterator[ControlClient]:
    with ControlClient(server.address) as c:
        yield c


@pytest.fixture
def client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.address) as c:
        yield c


def transitions(runner: control_pb2.RunnerInfo) -> list[tuple[int, float]]:
    return [(t.state, t.at.ToNanoseconds() / 1e9) for t in runner.transitions]


def state_names(runner: control_pb2.RunnerInfo) -> list[str]:
    return [common_pb2.RunnerState.Name(s).removeprefix("RUNNER_STATE_")
            for s, _ in transitions(runner)]


def most_at_once(runners: list[control_pb2.RunnerInfo]) -> int:
    """The most runners that were alive (from their first state to TERMINATED) at once."""
    edges = []
    for runner in runners:
        times = transitions(runner)
        edges += [(times[0][1], 1), (times[-1][1], -1)]
    alive = peak = 0
    for _, change in sorted(edges):
        alive += change
        peak = max(peak, alive)
    return peak


def test_a_burst_scales_out_within_the_limits_and_back_to_zero(
    server: ServerProcess, client: SyncClient, control: ControlClient
) -> None:
    endpoint = server.deploy(APP, "--app-name", "burst")  # max_concurrency 4, multiplexing 2
    ids = [client.submit(endpoint, {"seconds": 0.3}).request_id for _ in range(60)]
    outputs = [client.wait(i, timeout=120).output for i in ids]
    assert max(o["peak"] for o in outputs) == 2  # never more than 2 on one runner
    assert len({o["runner"] for o in outputs}) > 1  # it scaled out
    # keep_alive is 2 s: every runner goes, through TERMINATING, to TERMINATED.
    wait_for(lambda: not control.list_runners("burst"), timeout=30, what="zero runners")
    ended = control.list_runners("burst", [TERMINATED])
    assert {o["runner"] for o in outputs} <= {r.runner_id for r in ended}
    assert most_at_once(ended) <= 4
    for runner in ended:
        names = state_names(runner)
        assert names[:3] == ["PENDING", "SETUP", "IDLE"], names
        assert names[-2:] == ["TERMINATING", "TERMINATED"], names


def test_min_concurrency_set_by_scale_keeps_two_warm_runners(
    server: ServerProcess, control: ControlClient
) -> None:
    server.deploy(APP, "--app-name", "warm")
    server.cli("apps", "scale", "warm", "--min-concurrency", "2")  # in force at once
    warm = wait_for(lambda: {r.runner_id for r in control.list_runners("warm", [IDLE])}
                    if len(control.list_runners("warm", [IDLE])) == 2 else None,
                    timeout=60, what="two idle runners")
    time.sleep(3.0)  # past keep_alive (2 s): nothing happens, which no event can show
    assert {r.runner_id for r in control.list_runners("warm")} == warm
    server.cli("apps", "scale", "warm", "--min-concurrency", "0")
    wait_for(lambda: not control.list_runners("warm"), timeout=30, what="zero runners")


def test_scale_settings_survive_or_reset_on_redeploy_as_fal_says(
    server: ServerProcess, control: ControlClient
) -> None:
    server.deploy(APP, "--app-name", "scaled")
    scaled = server.cli("apps", "scale", "scaled", "--keep-alive", "300", "--min-concurrency",
                        "0", "--request-timeout", "77", "--max-multiplexing", "3",
                        "--machine-types", "M", "--output", "json")
    assert json.loads(scaled.stdout)["effective"]["max_multiplexing"] == 3
    effective = control.get_app("scaled").effective
    assert (effective.keep_alive_s, effective.request_timeout_s) == (300, 77)
    assert (effective.max_multiplexing, list(effective.machine_types)) == (3, ["M"])

    redeploy = server.cli("deploy", APP, "--app-name", "scaled")
    assert "kept the settings `falrt apps scale` set" in redeploy.stderr
    effective = control.get_app("scaled").effective
    assert (effective.keep_alive_s, effective.request_timeout_s) == (300, 77)  # runtime-tunable
    assert effective.min_concurrency == 0
    assert (effective.max_multiplexing, list(effective.machine_types)) == (2, ["S"])  # code's

    server.cli("deploy", APP, "--app-name", "scaled", "--reset-scale")
    info = control.get_app("scaled")
    assert info.scale_overrides.ByteSize() == 0
    assert (info.effective.keep_alive_s, info.effective.request_timeout_s) == (2, 3600)

    bad = server.cli("apps", "scale", "scaled", "--machine-types", "GPU-Z9", check=False)
    assert bad.returncode != 0 and "unknown machine type 'GPU-Z9'" in bad.stderr
    nothing = server.cli("apps", "scale", "scaled", check=False)
    assert nothing.returncode != 0 and "nothing to change" in nothing.stderr


def test_a_crashing_setup_backs_off_longer_each_time_until_a_fix_is_deployed(
    server: ServerProcess, client: SyncClient, control: ControlClient, tmp_path: Path
) -> None:
    app_file = tmp_path / "broken.py"
    app_file.write_text(BROKEN_SETUP)
    endpoint = server.deploy(f"{app_file}::Broken")
    request_id = client.submit(endpoint, {"x": 7}).request_id
    assert "the model file is missing" in waiting_reason(client, request_id)

    def backoffs() -> list[float] | None:
        """How long each finished CRASH_BACKOFF lasted, once there were four."""
        runners = control.list_runners("broken")
        if not runners:
            return None
        steps = transitions(runners[0])
        waits = [after - at for (state, at), (_, after) in itertools.pairwise(steps)
                 if state == CRASH_BACKOFF]
        return waits if len(waits) >= 4 else None

    waits = wait_for(backoffs, timeout=60, what="four crash backoffs")
    # +0.4 s per consecutive failure, capped at 1.2 s (timer slack allowed, never shorter).
    for wait, expected in zip(waits, [0.4, 0.8, 1.2, 1.2], strict=False):
        assert expected - 0.05 <= wait <= expected + 1.0, waits
    assert control.list_runners("broken")[0].last_error.endswith("the model file is missing")

    app_file.write_text(BROKEN_SETUP.replace(
        'raise RuntimeError("the model file is missing")', "pass"))
    server.deploy(f"{app_file}::Broken")
    assert client.wait(request_id, timeout=60).output == {"x": 7}
    assert all(r.state != CRASH_BACKOFF for r in control.list_runners("broken"))


def test_a_runner_killed_with_sigkill_is_replaced_and_its_request_retried(
    server: ServerProcess, client: SyncClient, tmp_path: Path
) -> None:
    endpoint = server.deploy(APP, "--app-name", "victim")
    gate = make_gate(tmp_path / "gate")
    pid_file = tmp_path / "pid"
    request_id = client.submit(
        endpoint, {"gate": str(gate), "pid_file": str(pid_file)}).request_id
    pid = wait_for(lambda: int(pid_file.read_text()) if pid_file.exists() else None,
                   what="the handler started")
    os.kill(pid, signal.SIGKILL)
    # The retry runs on a new runner (it writes its pid, then waits on the gate again).
    wait_for(lambda: pid_file.read_text() not in ("", str(pid)), timeout=60,
             what="the retry started")
    release(gate)
    done = client.wait(request_id, timeout=60)
    assert done.error is None and done.output["pid"] != pid


def test_runner_commands_stop_replace_kill_and_logs(
    server: ServerProcess, client: SyncClient, control: ControlClient
) -> None:
    endpoint = server.deploy(APP, "--app-name", "ops")
    # The app's keep_alive (2 s) could end the idle runner before the commands reach it
    # when the machine is busy: this test is about the commands.
    server.cli("apps", "scale", "ops", "--keep-alive", "300")
    first = client.wait(client.submit(endpoint, {}).request_id, timeout=60).output["runner"]
    assert "lifecycle setup done" in server.cli("runners", "logs", first).stdout
    follower = subprocess.Popen([FALRT, "--host", server.address, "runners", "logs", first,
                                 "--follow"], stdout=subprocess.PIPE, text=True, env=_env())

    stopped = server.cli("runners", "stop", first, "--replace")
    second = stopped.stderr.split()[1].rstrip(";")
    assert second.startswith("r-") and second != first
    # The replacement comes up first; then the old runner drains and ends.
    wait_for(lambda: any(r.runner_id == first for r in control.list_runners("ops", [TERMINATED])),
             timeout=60, what="the old runner ended")
    assert [r.runner_id for r in control.list_runners("ops")] == [second]
    out, _ = follower.communicate(timeout=30)  # --follow ends with the runner
    assert "lifecycle setup done" in out

    killed = server.cli("runners", "kill", second)
    assert f"killed {second}" in killed.stderr
    wait_for(lambda: not control.list_runners("ops"), what="the killed runner gone")
    names = state_names(control.list_runners("ops", [TERMINATED])[-1])
    assert names[-2:] == ["TERMINATING", "TERMINATED"]
    missing = server.cli("runners", "stop", "r-000000000000", check=False)
    assert missing.returncode != 0 and "no live runner" in missing.stderr
    bad = server.cli("runners", "logs", "../../etc/passwd", check=False)
    assert bad.returncode != 0 and "invalid runner id" in bad.stderr


def test_machine_types_are_tried_in_order_and_missing_capacity_is_reported(
    server: ServerProcess, client: SyncClient, control: ControlClient, tmp_path: Path
) -> None:
    source = Path(APP.partition("::")[0]).read_text().replace(
        "    keep_alive = 2\n", '    keep_alive = 2\n    machine_type = ["GPU-H100", "M"]\n')
    app_file = tmp_path / "fallback.py"
    app_file.write_text(source)
    endpoint = server.deploy(f"{app_file}::Lifecycle", "--app-name", "fallback")
    runner = client.wait(client.submit(endpoint, {}).request_id, timeout=60).output["runner"]
    assert {r.runner_id: r.machine_type for r in control.list_runners("fallback")} == {
        runner: "M"}

    gpu_only = server.deploy(APP, "--app-name", "gpu-only")
    server.cli("apps", "scale", "gpu-only", "--machine-types", "GPU-H100")
    request_id = client.submit(gpu_only, {}).request_id
    assert "no capacity for GPU-H100" in waiting_reason(client, request_id)
    assert not control.list_runners("gpu-only")
    client.cancel(request_id)


def test_a_stop_drains_in_flight_requests_then_tears_down_within_the_grace_period(
    server: ServerProcess, client: SyncClient, control: ControlClient, tmp_path: Path
) -> None:
    source = Path(APP.partition("::")[0]).read_text().replace(
        "    keep_alive = 2\n", "    keep_alive = 2\n    termination_grace_period_seconds = 2\n")
    app_file = tmp_path / "graceful.py"
    app_file.write_text(source)
    endpoint = server.deploy(f"{app_file}::Lifecycle", "--app-name", "graceful")
    gate = make_gate(tmp_path / "gate")
    running = client.submit(endpoint, {"gate": str(gate)}).request_id
    runner = wait_for(lambda: next(iter(control.list_runners("graceful")), None)
                      if any(r.in_flight_request_ids for r in control.list_runners("graceful"))
                      else None, timeout=60, what="the request running")
    listing = server.cli("apps", "runners", "graceful").stdout  # counts, runners, requests
    assert "1 running" in listing and runner.runner_id in listing and running in listing
    server.cli("runners", "stop", runner.runner_id)
    # DRAINING: no new work; the request in flight finishes, then teardown().
    wait_for(lambda: control.list_runners("graceful")[0].state
             == common_pb2.RUNNER_STATE_DRAINING, what="draining")
    release(gate)
    assert client.wait(running, timeout=30).error is None
    ended = wait_for(lambda: control.list_runners("graceful", [TERMINATED]), what="the end")
    assert state_names(ended[0])[-4:] == ["RUNNING", "DRAINING", "TERMINATING", "TERMINATED"]
    log = server.cli("runners", "logs", runner.runner_id).stdout
    assert log.index("handle_exit with 1 in flight") < log.index("teardown done")

    # A teardown that never ends is killed when the grace period (2 s) has passed.
    hung = client.wait(client.submit(endpoint, {"hang_teardown": True}).request_id,
                       timeout=60).output["runner"]
    stopped_at = time.monotonic()
    server.cli("runners", "stop", hung)
    wait_for(lambda: hung in {r.runner_id for r in control.list_runners("graceful", [TERMINATED])},
             timeout=30, what="the hung runner killed")
    assert 2.0 <= time.monotonic() - stopped_at < 6.0
    log = server.cli("runners", "logs", hung).stdout
    assert "teardown started" in log and "teardown done" not in log


PRINTING_APP = '''
import os

import msgspec
import falrt


class Nothing(msgspec.Struct):
    pass


class Said(msgspec.Struct):
    runner: str


class Printing(falrt.App):
    app_name = "printing"
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: Nothing) -> Said:
        print("hello from the handler")
        return Said(runner=os.environ["FALRT_RUNNER_ID"])
'''


def test_a_runner_log_shows_its_handlers_prints_and_is_removed_after_the_retention(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--runner-log-retention", "1"]).start()
    try:
        app_file = tmp_path / "printing.py"
        app_file.write_text(PRINTING_APP)
        endpoint = server.deploy(f"{app_file}::Printing")
        with SyncClient(server.address) as client, ControlClient(server.address) as control:
            request_id = client.submit(endpoint, {}).request_id
            said = client.wait(request_id, timeout=60).output
            [runner] = control.list_runners("printing")
        assert runner.runner_id == said["runner"]
        line = re.compile(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} stdout \[{request_id}\]: "
                          r"hello from the handler$", re.M)
        wait_for(lambda: line.search(server.cli("runners", "logs", runner.runner_id).stdout),
                 what="the handler's print in the runner's log")
        log_file = tmp_path / "data" / "runners" / f"{runner.runner_id}.log"
        time.sleep(1.5)  # older than the retention, but its runner still runs: kept
        assert log_file.exists()
        server.cli("runners", "kill", runner.runner_id)
        wait_for(lambda: not log_file.exists(), what="the ended runner's log removed")
        gone = server.cli("runners", "logs", runner.runner_id, check=False)
        assert gone.returncode != 0 and "no log for runner" in gone.stderr
    finally:
        stop_cleanly(server)
