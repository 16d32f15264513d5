"""`falrt run`, the dev loop, as a person uses it: a real `falrt run` subprocess in a terminal
of its own (its own process group, which a Ctrl-C reaches as a whole), a real server (the
private one `falrt run` starts, or a `local_server` given with --host), real runners, real
file edits and real calls. Each test ends with SIGINT and checks that nothing is left: no
app, no runner, no server process, no temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from falrt.cli.main import main
from falrt.cli.run import dev_name, example_input

from falrt.client.control import ControlClient
from falrt.client.sync import SyncClient
from falrt.testing_server import falrt_command, local_server
from tests.harness import wait_for

RELOAD_TARGET_S = 2.0  # the bound: from the write to the first answer of new code
LINE_TIMEOUT_S = 60.0
TAG = "TESTS_FALRT_RUN_TAG"  # set in falrt run's environment; its server and runners inherit it
CALL_LINE = re.compile(r"FALRT_CREDENTIALS=(\S+) falrt call (\S+) .*--host (\S+)")
SERVES_LINE = re.compile(r"^(\S+) serves revision (\S+)")

APP = '''
import msgspec

import falrt


class Input(msgspec.Struct):
    name: str


class Output(msgspec.Struct):
    text: str


class Greeter(falrt.App):
    keep_alive = 300

    def setup(self) -> None:
        print("setting up VERSION")

    @falrt.endpoint("/")
    def greet(self, request: Input) -> Output:
        print(f"greeting {request.name}")
        return Output(text="VERSION " + request.name)
'''


def app_source(version: str) -> str:
    return APP.replace("VERSION", version)


class FalrtRun:
    """A `falrt run` subprocess; its output (stdout and stderr) read line by line on a
    thread, so that a wait has a deadline and a failure shows everything printed. Each test
    writes one file version at a time, so a line is looked for in all the output so far."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None):
        self.tag = uuid.uuid4().hex
        self.tmp = tmp_path / "tmp"  # where the private server's directory goes (TMPDIR)
        self.tmp.mkdir(exist_ok=True)
        environ = {k: v for k, v in (env or os.environ).items() if k != "FALRT_HOST"}
        environ.update({TAG: self.tag, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [falrt_command(), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=environ, start_new_session=True)
        self.output: list[str] = []
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, pattern: str | re.Pattern[str], timeout: float = LINE_TIMEOUT_S
               ) -> re.Match[str]:
        """The first line of the output so far, or to come, that matches `pattern`; fails
        at the deadline or at the end of the output."""
        for seen in self.output:
            if match := re.search(pattern, seen):
                return match
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.text())

    def text(self) -> str:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return "\n".join(self.output)
            if line is not None:
                self.output.append(line)

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it (to the whole process group); the exit status."""
        return self.signal(signal.SIGINT, group=True)

    def signal(self, signum: int, *, group: bool = False) -> int:
        """Sends `signum` to `falrt run` (or its process group); the exit status."""
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(60)
        finally:
            self.read_to_end()

    def read_to_end(self) -> None:
        """Reads the rest of the output (the process has exited) into `output`."""
        with contextlib.suppress(AssertionError):
            self.expect(r"(?!)", timeout=5)  # a pattern that matches nothing

    def kill(self) -> None:
        """The teardown after a failure: SIGKILL to `falrt run` and every process that
        carries its tag (its private server runs in a session of its own)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> dict[int, str]:
        """The processes that still carry this run's tag: pid -> command line."""
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                if f"{TAG}={self.tag}".encode() in environ:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    found[int(entry.name)] = cmdline.decode(errors="replace")
            except (OSError, ValueError):  # not a process, gone meanwhile, or not ours
                continue
        return found

    def assert_nothing_left(self) -> None:
        try:
            wait_for(lambda: not self.leftovers(), timeout=10, what="no leftover processes")
        except AssertionError:
            raise AssertionError(f"left behind: {self.leftovers()}\n{self.text()}") from None
        assert list(self.tmp.iterdir()) == [], "the private server's directory was left"


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "app" / "app.py"
    path.parent.mkdir()
    path.write_text(app_source("v1"))
    return path


@pytest.fixture
def private_run(app_file: Path, tmp_path: Path) -> Iterator[tuple[FalrtRun, SyncClient, str]]:
    """`falrt run` on its own private server: (the run, a client with the server's key,
    the endpoint id), once the app serves and the run watches for changes."""
    run = FalrtRun([f"{app_file}::Greeter"], tmp_path)
    try:
        credentials, endpoint_id, host = run.expect(CALL_LINE).groups()
        run.expect("watching .* for changes")
        key = next(iter(json.loads(Path(credentials).read_text())["servers"].values()))
        with SyncClient(host, key=key) as client:
            yield run, client, endpoint_id
    finally:
        run.kill()


def greet(client: SyncClient, endpoint_id: str) -> str:
    text: str = client.run(endpoint_id, {"name": "x"}, timeout=30)["text"]
    return text


def first_answer_of(client: SyncClient, endpoint_id: str, wanted: str, timeout: float) -> float:
    """Calls the endpoint until it answers `wanted`; the seconds that took."""
    started = time.monotonic()
    wait_for(lambda: greet(client, endpoint_id) == wanted, timeout=timeout,
             what=f"the answer {wanted!r}")
    return time.monotonic() - started


@pytest.mark.e2e
def test_an_edit_is_served_within_two_seconds_and_ctrl_c_leaves_nothing(
    private_run: tuple[FalrtRun, SyncClient, str], app_file: Path,
) -> None:
    run, client, endpoint_id = private_run
    assert endpoint_id == "local/greeter"
    assert greet(client, endpoint_id) == "v1 x"
    run.expect(r"^\[[0-9a-f]{6}\] setting up v1$")  # the runner's log, prefixed with its id
    app_file.write_text(app_source("v2"))
    took = first_answer_of(client, endpoint_id, "v2 x", timeout=30)
    assert [greet(client, endpoint_id) for _ in range(20)] == ["v2 x"] * 20
    reloaded = run.expect(r"reloaded in (\d+\.\d) s: revision rev-")
    print(f"the new code answered {took:.2f} s after the write ({reloaded.group(0)})")
    assert took < RELOAD_TARGET_S, (
        f"the new code answered {took:.2f} s after the write ({reloaded.group(0)})")
    run.expect(r"^\[[0-9a-f]{6}\] setting up v2$")  # a runner that started after the reload
    assert run.interrupt() == 0
    assert "stopped: removed greeter and the private server" in run.text()
    run.assert_nothing_left()


@pytest.mark.e2e
def test_a_syntax_error_keeps_the_old_code_serving_until_the_next_edit_and_sigterm_stops(
    private_run: tuple[FalrtRun, SyncClient, str], app_file: Path,
) -> None:
    run, client, endpoint_id = private_run
    app_file.write_text(app_source("v2").replace("def setup(self)", "def setup(self"))
    run.expect("SyntaxError")
    run.expect("the reload failed; the previous revision keeps serving")
    assert greet(client, endpoint_id) == "v1 x"
    app_file.write_text(app_source("v3"))
    run.expect(r"reloaded in")
    assert greet(client, endpoint_id) == "v3 x"
    assert run.signal(signal.SIGTERM) == 0  # as a service manager stops it
    assert "stopped: removed greeter and the private server" in run.text()
    run.assert_nothing_left()


@pytest.mark.e2e
def test_with_host_an_ephemeral_app_runs_beside_the_real_one_and_goes_on_ctrl_c(
    app_file: Path, tmp_path: Path,
) -> None:
    with local_server(tmp_path / "server") as server:
        prod = app_file.parent.parent / "prod" / "app.py"
        prod.parent.mkdir()
        prod.write_text(app_source("prod"))
        assert server.deploy(f"{prod}::Greeter", "--wait") == "local/greeter"
        run = FalrtRun([f"{app_file}::Greeter", "--host", server.address], tmp_path,
                       env=server.env)
        try:
            endpoint_id = run.expect(SERVES_LINE).group(1)
            run.expect("watching .* for changes")
            name = endpoint_id.removeprefix("local/")
            assert re.fullmatch(r"greeter-dev-[0-9a-f]{4}", name), endpoint_id
            with server.client() as client, \
                    ControlClient(server.address, key=server.key) as control:
                assert greet(client, endpoint_id) == "v1 x"
                assert greet(client, "local/greeter") == "prod x"
                assert {app.name for app in control.list_apps()} == {"greeter", name}
                live = control.get_app("greeter").revision_id
                assert run.interrupt() == 0
                assert [app.name for app in control.list_apps()] == ["greeter"]
                assert name not in {runner.app_name for runner in control.list_runners()}
                assert control.get_app("greeter").revision_id == live
                assert greet(client, "local/greeter") == "prod x"
            assert f"stopped: removed {name} from {server.address}" in run.text()
        finally:
            run.kill()
    run.assert_nothing_left()


@pytest.mark.e2e
def test_a_first_deploy_that_fails_in_setup_exits_with_the_error_and_the_log(
    app_file: Path, tmp_path: Path,
) -> None:
    app_file.write_text(app_source("v1").replace(
        'print("setting up v1")', 'print("setting up v1")\n        raise RuntimeError("boom")'))
    run = FalrtRun([f"{app_file}::Greeter"], tmp_path)
    try:
        status = run.proc.wait(60)
        run.read_to_end()
    finally:
        run.kill()
    output = run.text()
    assert status == 5, output  # the exit status of a failed `falrt deploy --wait`
    assert re.search(r"^\[[0-9a-f]{6}\] setting up v1$", output, re.MULTILINE), output
    assert re.search(r"^Error: .*failed to start.*RuntimeError: boom", output, re.MULTILINE)
    assert "stopped: removed greeter and the private server" in output
    run.assert_nothing_left()


@pytest.mark.e2e
def test_a_file_that_does_not_import_stops_before_any_server_starts(
    app_file: Path, tmp_path: Path,
) -> None:
    app_file.write_text(app_source("v1").replace("def setup(self)", "def setup(self"))
    run = FalrtRun([f"{app_file}::Greeter"], tmp_path)
    assert run.proc.wait(60) == 4
    run.read_to_end()
    assert "SyntaxError" in run.text()
    assert "starting a private falrt server" not in run.text()
    run.assert_nothing_left()


@pytest.mark.unit
def test_an_ephemeral_name_keeps_within_the_length_of_an_app_name() -> None:
    assert re.fullmatch(r"greeter-dev-[0-9a-f]{4}", dev_name("greeter"))
    long = dev_name("a" * 60 + "-b-c")
    assert len(long) == 63 and "--" not in long


@pytest.mark.unit
def test_the_example_input_has_a_placeholder_for_each_required_field() -> None:
    schema = {"$ref": "#/$defs/Input", "$defs": {"Input": {
        "type": "object", "required": ["name", "n", "flags"],
        "properties": {"name": {"type": "string"}, "n": {"type": "integer"},
                       "flags": {"type": "array"}, "opt": {"type": "string"}}}}}
    assert example_input(json.dumps(schema)) == {"name": "", "n": 0, "flags": []}


@pytest.mark.unit
def test_run_lists_its_options_and_the_global_ones() -> None:
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    for option in ("--no-reload", "--http", "--env", "--host", "--tls-ca"):
        assert option in help_text


@pytest.mark.unit
def test_http_with_a_given_server_is_a_usage_error(app_file: Path) -> None:
    result = CliRunner().invoke(main, ["run", f"{app_file}::Greeter", "--http", "--host",
                                       "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "--http opens the private server's HTTP listener" in result.output
