"""`falrt run FILE::CLASS`: the dev loop. Deploy, stream the runners' logs, redeploy on save.

The app runs on a private local server started for the purpose (a temporary data directory,
a free port, credentials of its own, the process backend), or, when a server is given
(`--host` on the command line or `FALRT_HOST`), on that server under an ephemeral name,
`<app>-dev-<4 hex>`, so that an app of the real name is never replaced. Each (re)deploy packs
the app in a fresh process (`Packer`): the app file and every local module it imports are
read anew (an in-process re-import would keep stale modules), and user code never runs in
this process after the first import. The bundle then goes up this process's control channel
as a rolling deploy that waits for a ready runner, so a failed reload leaves the previous
revision serving. Ctrl-C or SIGTERM deletes the app, stops the private server and removes
its directory. The rules are in docs/dev-loop.md.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource

from falrt.client.connection import ConnectOptions
from falrt.client.control import ControlClient
from falrt.errors import FalrtError, NotFoundError
from falrt.names import APP_NAME, MAIN, full_name
from falrt.sdk.spec import AppDescription, describe
from falrt.testing_server import local_server
from falrt.v1 import common_pb2, control_pb2

from .context import CliContext, env_option, pass_cli
from .deploy import load_app_class, parse_app_ref
from .errors import CliError, reporting_errors, to_cli_error
from .render import say
from .run_logs import ALL_STATES, RunnerLogs
from .run_pack import Packer, PackFailed, deploy_bundle

# watchfiles yields a batch once no change came for STEP_MS, or DEBOUNCE_MS after its first
# change: an editor's save (a temporary file, a rename) is one batch, and a reload starts
# within about 0.1 s of it.
DEBOUNCE_MS = 300
STEP_MS = 50
IDLE_WAKE_MS = 200  # the watcher's wake-up when nothing changes (its first one starts us)
STOP_TIMEOUT_S = 10.0  # the private server gets SIGTERM, then SIGKILL after this
RUNNERS_GONE_TIMEOUT_S = 15.0  # how long a deleted app's runners are waited for
DEV_SUFFIX = "-dev-"
MAX_APP_NAME = 63
LIVE_STATES = [value for value in ALL_STATES if value != common_pb2.RUNNER_STATE_TERMINATED]
PLACEHOLDERS: dict[str, Any] = {"string": "", "integer": 0, "number": 0, "boolean": False,
                                "array": [], "object": {}}


@dataclass(frozen=True)
class Server:
    """Where the app runs and how this command and the printed lines reach it."""

    host: str
    connect: ConnectOptions
    cli_args: tuple[str, ...]  # --host and the TLS options, for the `falrt call` line
    private_root: Path | None = None  # the private server's temporary directory
    http: str = ""  # the private server's HTTP listener, HOST:PORT
    key: str | None = field(default=None, repr=False)  # the private server's admin key


@click.command("run")
@click.argument("app_ref", metavar="FILE::CLASS")
@click.option("--no-reload", is_flag=True, help="do not watch the app's folder for changes")
@click.option("--http", "http", is_flag=True,
              help="also open the private server's HTTP listener (fal's HTTP APIs, curl) on "
                   "a free loopback port; not with --host")
@env_option
@pass_cli
def run(cli: CliContext, app_ref: str, no_reload: bool, http: bool, env: str) -> None:
    """Run an app for development: deploy it, stream its runners' logs, redeploy on save.

    Without --host (or FALRT_HOST), a private local server is started for the run and
    stopped at the end; with one, the app is deployed as APP-dev-XXXX beside the others.
    Ctrl-C deletes the app (and stops the private server). docs/dev-loop.md has the rules.
    """
    path, class_name = parse_app_ref(app_ref)
    given = _server_given(click.get_current_context())
    if http and given:
        raise click.UsageError("--http opens the private server's HTTP listener; a given "
                               "server serves HTTP if it runs with --http-listen")
    with reporting_errors(cli.host):
        spec = describe(load_app_class(path, class_name))
    name = dev_name(spec.app_name) if given else spec.app_name
    with _sigterm_interrupts(), reporting_errors(cli.host):
        DevLoop(cli, path, spec, Packer(path, class_name, name), env).run(
            given=given, http=http, reload=not no_reload)


def dev_name(app_name: str) -> str:
    """`<app>-dev-<4 hex>`: a name of this run's own, cut to the 63 characters a name may
    have."""
    suffix = f"{DEV_SUFFIX}{secrets.token_hex(2)}"
    name = f"{app_name[:MAX_APP_NAME - len(suffix)].rstrip('-')}{suffix}"
    assert APP_NAME.match(name), name
    return name


def _server_given(ctx: click.Context) -> bool:
    """Whether --host came from the command line (before or after `run`) or FALRT_HOST."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return any(c.get_parameter_source("host") in given for c in (ctx, ctx.parent) if c)


class DevLoop:
    """One `falrt run`: owns the private server (if any), the app it deploys and the log
    streamer. Used from the main thread only; `run` returns once Ctrl-C or SIGTERM has been
    handled and everything it made is gone."""

    def __init__(self, cli: CliContext, path: Path, spec: AppDescription, packer: Packer,
                 env: str) -> None:
        self.cli, self.path, self.spec, self.packer, self.env = cli, path, spec, packer, env
        self.full_name = full_name(packer.app_name, env)  # as the server knows it
        self.stack = ExitStack()
        self.removed: list[str] = []  # what the clean-up removed, for the last line

    def run(self, *, given: bool, http: bool, reload: bool) -> None:
        """Serves until interrupted, then removes what it made. Raises the CLI error of
        the first deploy when it fails, CliError when the private server does not start."""
        self.packer.warm()  # its imports overlap the server's start
        self.stack.callback(self.packer.close)
        try:
            server = self._server_given() if given else self._start_private_server(http)
            self._serve(server, reload)
        except KeyboardInterrupt:
            pass
        finally:
            with _signals_ignored():
                self.stack.close()
            if self.removed:
                say(f"stopped: removed {' and '.join(self.removed)}")

    def _server_given(self) -> Server:
        connect = self.cli.connect
        args = ["--host", self.cli.host]
        for option in ("tls_ca", "tls_client_cert", "tls_client_key"):
            if connect.get(option):
                args += [f"--{option.replace('_', '-')}", str(connect.get(option))]
        return Server(self.cli.host, connect, tuple(args))

    def _start_private_server(self, http: bool) -> Server:
        root = Path(tempfile.mkdtemp(prefix="falrt-run-"))
        self.stack.callback(self._remove_dir, root)
        say(f"starting a private falrt server in {root}")
        extra = ["--backend", "process", f"--http-listen={'127.0.0.1:0' if http else ''}"]
        try:
            local = self.stack.enter_context(local_server(
                root, extra_args=extra, stop_timeout_s=STOP_TIMEOUT_S, new_session=True))
        except RuntimeError as exc:
            raise CliError(f"the private server did not start: {exc}") from None
        return Server(local.address, ConnectOptions(key=local.key), ("--host", local.address),
                      root, local.listeners.get("http", ""), local.key)

    def _serve(self, server: Server, reload: bool) -> None:
        control = self.stack.enter_context(ControlClient(server.host, **server.connect))
        self._prepare(control, server)
        self.stack.callback(self._remove_app, control, server)
        logs = RunnerLogs(control, self.full_name)
        logs.start()
        self.stack.callback(logs.stop)
        try:
            first = self._deploy(control)
        except PackFailed:
            raise
        except FalrtError as exc:
            logs.settle()  # the failed runner's log, before the error
            raise to_cli_error(exc, server.host) from exc
        print_how_to_call(first, self.spec, server)
        if reload:
            self._reload_on_change(self.path.resolve().parent, server, control)
        say("not watching for changes (--no-reload); Ctrl-C removes the app")
        while True:
            signal.pause()  # until Ctrl-C or SIGTERM raises KeyboardInterrupt

    def _prepare(self, control: ControlClient, server: Server) -> None:
        """Checks that the server answers and takes the key, and that the app's name is
        free, before anything is made there."""
        if server.private_root and self.env != MAIN:
            control.create_environment(self.env)  # a new server has `main` only
        with contextlib.suppress(NotFoundError):
            control.get_app(self.full_name)
            raise CliError(f"an app {self.full_name} exists on {server.host} already (another "
                           "`falrt run`?); run again for another name")

    def _deploy(self, control: ControlClient) -> control_pb2.DeployResult:
        """Packs the app anew and deploys it (rolling, waiting for a ready runner); raises
        PackFailed, or the FalrtError of the deploy (a failed startup: the previous
        revision keeps serving)."""
        try:
            header, bundle = self.packer.pack()
            header.environment = self.env
            header.strategy = control_pb2.STRATEGY_ROLLING
            header.wait = True
            return deploy_bundle(control, header, bundle)
        finally:
            self.packer.warm()  # for the next change, while the person edits

    def _reload_on_change(self, folder: Path, server: Server, control: ControlClient) -> None:
        """Redeploys after each batch of changes under `folder` until interrupted."""
        watchfiles = _watchfiles()
        watching = False
        # The first (empty) batch comes once the watcher runs: only then is "watching" true.
        for changes in watchfiles.watch(folder, watch_filter=watchfiles.DefaultFilter(),
                                        debounce=DEBOUNCE_MS, step=STEP_MS,
                                        rust_timeout=IDLE_WAKE_MS, yield_on_timeout=True,
                                        raise_interrupt=True):
            if not watching:
                say(f"watching {folder} for changes; Ctrl-C removes the app")
                watching = True
            if changes:
                changed = sorted({Path(path).name for _, path in changes})
                say(f"changed: {', '.join(changed)}; redeploying")
                self._reload(server, control)

    def _reload(self, server: Server, control: ControlClient) -> None:
        started = time.monotonic()
        try:
            outcome = self._deploy(control)
        except (FalrtError, PackFailed) as exc:
            error = exc if isinstance(exc, PackFailed) else to_cli_error(exc, server.host)
            say(f"{error.message}\nthe reload failed; the previous revision keeps serving; "
                "waiting for the next change", style="red")
            return
        if outcome.unchanged:
            say(f"nothing to deploy: revision {outcome.revision_id} already serves this")
        else:
            say(f"reloaded in {time.monotonic() - started:.1f} s: revision "
                f"{outcome.revision_id} serves", style="green")

    def _remove_app(self, control: ControlClient, server: Server) -> None:
        """Deletes the app and waits (bounded) until its runners are gone."""
        try:
            control.delete_app(self.full_name)
            deadline = time.monotonic() + RUNNERS_GONE_TIMEOUT_S
            while self.full_name in {r.app_name for r in control.list_runners("", LIVE_STATES)}:
                if time.monotonic() > deadline:
                    raise CliError(f"runners of {self.full_name} still run after "
                                   f"{RUNNERS_GONE_TIMEOUT_S:.0f} s")
                time.sleep(0.1)  # another process's state: there is no event to wait on
        except NotFoundError:
            pass  # the first deploy never made it
        except (FalrtError, CliError) as exc:
            say(f"could not remove {self.full_name}: {exc}; `falrt apps delete "
                f"{self.full_name} --host {server.host}` removes it", style="red")
            return
        self.removed.append(self.full_name if server.private_root
                            else f"{self.full_name} from {server.host}")

    def _remove_dir(self, root: Path) -> None:
        """The private server's directory, once the server has stopped."""
        shutil.rmtree(root, ignore_errors=True)
        self.removed.append(f"the private server ({root})")


def print_how_to_call(
    deployed: control_pb2.DeployResult, spec: AppDescription, server: Server
) -> None:
    """The endpoint id, a `falrt call` line per endpoint and, with HTTP, a curl line."""
    where = (f"on a private server at {server.host}" if server.private_root
             else f"on {server.host} as an ephemeral app (the app {spec.app_name} there is "
                  "not touched)")
    click.echo(f"{deployed.endpoint_id} serves revision {deployed.revision_id} {where}; "
               "it is removed on exit")
    credentials = (f"FALRT_CREDENTIALS={shlex.quote(str(server.private_root))}"
                   "/credentials.json " if server.private_root else "")
    for endpoint in spec.endpoints:
        if endpoint.kind == "realtime":
            continue
        data = shlex.quote(json.dumps(example_input(endpoint.input_schema_json)))
        target = deployed.endpoint_id + endpoint.path.rstrip("/")
        stream = " --stream" if endpoint.kind == "stream" else ""
        click.echo(f"  {credentials}falrt call {target}{stream} --data {data} "
                   f"{shlex.join(server.cli_args)}")
        if server.http and endpoint.kind == "unary":
            header = shlex.quote(f"Authorization: Key {server.key}")
            click.echo(f"  curl -H {header} -d {data} http://{server.http}/{target}")


def example_input(schema_json: str) -> dict[str, Any]:
    """An input with a placeholder for each required field of an endpoint's input schema."""
    schema = json.loads(schema_json)
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        schema = schema.get("$defs", {}).get(ref.rpartition("/")[2], {})
    properties = schema.get("properties", {})
    return {name: PLACEHOLDERS.get(properties.get(name, {}).get("type", ""))
            for name in schema.get("required", [])}


def _watchfiles() -> Any:
    try:
        import watchfiles
    except ModuleNotFoundError:
        raise CliError("reloading needs watchfiles: pip install 'falrt[server]' (or "
                       "'watchfiles'), or run with --no-reload") from None
    return watchfiles


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops `falrt run` as Ctrl-C does (and as orderly)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) must not cut the clean-up short and leave things."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
