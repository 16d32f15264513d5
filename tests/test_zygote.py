"""Zygotes (falrt/backends/zygote.py, shim/zygote.py): the process backend forks runners from a
warm template per interpreter, and they behave as runners started the plain way do.

Which way a runner started is seen from inside it: a forked runner's parent is the zygote
(the pid the server logs when the zygote is ready), a plain one's is the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from falrt.shim.zygote import Exited, Fork, Forked, Ready, decode, encode

from falrt.backends.zygote import startup_differs
from falrt.client import SyncClient
from falrt.client.control import ControlClient
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.sources import BROKEN_SETUP
from tests.test_failures import waiting_reason

PROBE = '''
import os
import sys

import msgspec
import falrt


class In(msgspec.Struct):
    names: list[str] = []


class Out(msgspec.Struct):
    pid: int
    ppid: int
    values: dict[str, str]
    cwd: str


class Probe(falrt.App):
    app_name = "{name}"
    keep_alive = 300
    {extra}

    def setup(self) -> None:
        print(f"probe setup in {{os.getpid()}}, child of {{os.getppid()}}", file=sys.stderr)

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        return Out(pid=os.getpid(), ppid=os.getppid(), cwd=os.getcwd(),
                   values={{n: os.environ.get(n, "<unset>") for n in request.names}})
'''
READY = re.compile(r"zygote (\d+) of \S+ is ready")
ALPHA = "alpha-secret-5f0c1e"
BETA = "beta-secret-93d2aa"


def deploy_probe(server: ServerProcess, tmp_path: Path, name: str, extra: str = "") -> str:
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(PROBE.format(name=name, extra=extra))
    return server.deploy(f"{path}::Probe")


def zygote_pids(server: ServerProcess) -> list[int]:
    """The pids of the zygotes the server reported ready, in order."""
    return [int(pid) for pid in READY.findall(server.log())]


def kill_runners(server: ServerProcess, app: str) -> None:
    """Kills the app's runners; returns once none is listed."""
    with ControlClient(server.address) as control:
        for runner in control.list_runners(app):
            control.kill_runner(runner.runner_id)
        wait_for(lambda: not control.list_runners(app), what=f"no runner of {app}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose zygote (of its own interpreter) is ready."""
    root = tmp_path_factory.mktemp("zygote")
    proc = ServerProcess(root / "data", root / "server.log").start()
    endpoint = deploy_probe(proc, root, "warmup")
    with SyncClient(proc.address) as client:
        first = client.run(endpoint, {})
    assert proc.proc is not None and first["ppid"] == proc.proc.pid  # plain: not warm yet
    wait_for(lambda: zygote_pids(proc), what="the zygote to be ready")
    yield proc
    stop_cleanly(proc)


@pytest.mark.e2e
def test_a_cold_request_is_served_by_a_runner_forked_from_the_zygote(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = deploy_probe(server, tmp_path, "cold")
    with SyncClient(server.address) as client:
        client.run(endpoint, {})
        kill_runners(server, "cold")
        out = client.run(endpoint, {"names": ["FALRT_APP_NAME", "CUDA_VISIBLE_DEVICES"]})
    zygote = zygote_pids(server)[-1]
    assert out["ppid"] == zygote
    assert out["values"] == {"FALRT_APP_NAME": "cold", "CUDA_VISIBLE_DEVICES": ""}
    assert out["cwd"].startswith(str(server.data_dir / "bundles"))
    assert os.getpgid(out["pid"]) == out["pid"]  # a process group (and session) of its own
    logs = "".join(path.read_text() for path in (server.data_dir / "runners").iterdir())
    assert f"probe setup in {out['pid']}, child of {zygote}" in logs  # its log is where it was


@pytest.mark.e2e
def test_secrets_reach_their_forked_runner_only(server: ServerProcess, tmp_path: Path) -> None:
    server.cli("secrets", "set", f"ALPHA={ALPHA}", f"BETA={BETA}")
    alpha = deploy_probe(server, tmp_path, "alpha", 'secrets = ["ALPHA"]')
    beta = deploy_probe(server, tmp_path, "beta", 'secrets = ["BETA"]')
    names = {"names": ["ALPHA", "BETA"]}
    with SyncClient(server.address) as client:
        client.run(alpha, {}), client.run(beta, {})
        kill_runners(server, "alpha")
        kill_runners(server, "beta")
        seen_alpha = client.run(alpha, names)
        seen_beta = client.run(beta, names)
    zygote = zygote_pids(server)[-1]
    assert seen_alpha["ppid"] == seen_beta["ppid"] == zygote
    assert seen_alpha["values"] == {"ALPHA": ALPHA, "BETA": "<unset>"}
    assert seen_beta["values"] == {"ALPHA": "<unset>", "BETA": BETA}
    zygote_environ = Path(f"/proc/{zygote}/environ").read_bytes()
    assert ALPHA.encode() not in zygote_environ and BETA.encode() not in zygote_environ
    assert ALPHA not in server.log() and BETA not in server.log()


@pytest.mark.e2e
def test_a_forked_runner_that_fails_setup_goes_to_crash_backoff(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = BROKEN_SETUP.replace(
        "    def setup(self) -> None:\n",
        "    def setup(self) -> None:\n        import os, sys\n"
        "        print(f'setup child of {os.getppid()}', file=sys.stderr)\n")
    app_file = tmp_path / "broken_forked.py"
    app_file.write_text(source.replace('app_name = "broken"', 'app_name = "broken-forked"'))
    endpoint = server.deploy(f"{app_file}::Broken")
    with SyncClient(server.address) as client:
        request_id = client.submit(endpoint, {"x": 1}).request_id
        assert "the model file is missing" in waiting_reason(client, request_id)
        runners = json.loads(server.cli(
            "runners", "list", "--app", "broken-forked", "--output", "json").stdout)
        assert [r["state"] for r in runners] == ["crash_backoff"]
        assert "exit status 3" in runners[0]["last_error"]
        client.cancel(request_id)
    log = (server.data_dir / "runners" / f"{runners[0]['runner_id']}.log").read_text()
    assert f"setup child of {zygote_pids(server)[-1]}" in log


@pytest.mark.e2e
def test_a_killed_zygote_is_replaced_and_requests_still_complete(
    fresh_server: ServerProcess, tmp_path: Path
) -> None:
    server = fresh_server
    endpoint = deploy_probe(server, tmp_path, "phoenix")
    with SyncClient(server.address) as client:
        client.run(endpoint, {})
        first = wait_for(lambda: zygote_pids(server), what="a zygote")[0]
        kill_runners(server, "phoenix")
        forked = client.run(endpoint, {})
        assert forked["ppid"] == first
        os.kill(first, signal.SIGKILL)
        # Its runner dies with it; the fleet sees the exit as for any crash.
        wait_for(lambda: not alive(forked["pid"]), what="the zygote's runner to die")
        with ControlClient(server.address) as control:
            wait_for(lambda: not control.list_runners("phoenix"), what="the runner to end")
        plain = client.run(endpoint, {})  # no zygote ready: the plain way, and another starts
        assert server.proc is not None and plain["ppid"] == server.proc.pid
        second = wait_for(lambda: zygote_pids(server)[1:], what="a new zygote")[0]
        assert second != first
        kill_runners(server, "phoenix")
        assert client.run(endpoint, {})["ppid"] == second
    assert "the zygote of" in server.log() and "exited; starting another" in server.log()


@pytest.mark.e2e
def test_stopping_the_server_stops_its_zygote_and_forked_runners(
    fresh_server: ServerProcess, tmp_path: Path
) -> None:
    server = fresh_server
    endpoint = deploy_probe(server, tmp_path, "stopper")
    with SyncClient(server.address) as client:
        client.run(endpoint, {})
        zygote = wait_for(lambda: zygote_pids(server), what="a zygote")[0]
        kill_runners(server, "stopper")
        runner = client.run(endpoint, {})
    assert runner["ppid"] == zygote
    stop_cleanly(server)  # fails unless nothing of the server's is left
    # (A process that is exiting may no longer show its environment for a moment.)
    wait_for(lambda: not alive(zygote) and not alive(runner["pid"]), timeout=10,
             what="the zygote and its runner to be gone")


@pytest.mark.e2e
def test_a_killed_server_takes_its_zygote_and_forked_runners_along(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    try:
        endpoint = deploy_probe(server, tmp_path, "orphan")
        with SyncClient(server.address) as client:
            client.run(endpoint, {})
            zygote = wait_for(lambda: zygote_pids(server), what="a zygote")[0]
            kill_runners(server, "orphan")
            runner = client.run(endpoint, {})
        assert runner["ppid"] == zygote
    finally:
        server.kill()  # no chance to stop anything
    wait_for(lambda: not server.leftovers() and not alive(zygote) and not alive(runner["pid"]),
             timeout=10, what="the zygote and its runner to die with the server")


@pytest.mark.e2e
def test_no_zygote_starts_every_runner_the_plain_way(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra=["--no-zygote"]).start()
    try:
        endpoint = deploy_probe(server, tmp_path, "plain")
        with SyncClient(server.address) as client:
            client.run(endpoint, {})
            kill_runners(server, "plain")
            again = client.run(endpoint, {})
        assert server.proc is not None and again["ppid"] == server.proc.pid
        assert not zygote_pids(server)
    finally:
        stop_cleanly(server)


@pytest.mark.unit
@pytest.mark.parametrize(("runner", "zygote", "differs"), [
    ({"PATH": "/bin", "SECRET": "x"}, {"PATH": "/usr/bin"}, []),  # applied after fork
    ({"PYTHONUNBUFFERED": "1"}, {"PYTHONUNBUFFERED": "1"}, []),
    ({"PYTHONHASHSEED": "0"}, {}, ["PYTHONHASHSEED"]),  # the interpreter read it at start
    ({}, {"LD_PRELOAD": "/x.so"}, ["LD_PRELOAD"]),
    ({"LC_ALL": "C", "MALLOC_ARENA_MAX": "2"}, {"LC_ALL": "C.UTF-8"},
     ["LC_ALL", "MALLOC_ARENA_MAX"]),
    ({"GRPC_ENABLE_FORK_SUPPORT": "1", "GRPC_VERBOSITY": "debug"}, {},
     ["GRPC_ENABLE_FORK_SUPPORT"]),
])
def test_a_runner_is_forked_only_when_its_startup_variables_match(
    runner: dict[str, str], zygote: dict[str, str], differs: list[str]
) -> None:
    assert startup_differs(runner, zygote) == differs


@pytest.mark.unit
def test_zygote_messages_round_trip_and_a_fork_never_shows_its_environment() -> None:
    fork = Fork(7, {"SECRET": "hunter2"}, "/bundle")
    for message in (Ready(12), fork, Forked(7, 99), Exited(99, -9)):
        assert decode(encode(message)) == message
    assert "hunter2" not in repr(fork) and "hunter2" not in str(fork)
