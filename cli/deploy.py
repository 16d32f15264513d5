"""`falrt deploy FILE::CLASS`: pack an app, stream it to the server, follow the rollout."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from falrt.bundle import Bundle, pack
from falrt.client.control import ControlClient
from falrt.errors import FalrtError
from falrt.sdk import loader as sdk_loader
from falrt.sdk.app import App
from falrt.sdk.spec import describe
from falrt.sdk.wire import to_deploy_header
from falrt.v1 import control_pb2
from falrt.vocabulary import AppAuth, DeployStrategy, names

from .context import CliContext, env_option, pass_cli
from .errors import CliError, InvalidInput, reporting_errors
from .render import OutputFormat, output_option, print_json, stderr


def parse_app_ref(ref: str) -> tuple[Path, str | None]:
    """`path.py::Class` (or `path.py` with one App class) -> (file, class name or None)."""
    file, _, class_name = ref.partition("::")
    path = Path(file)
    if path.suffix != ".py" or not path.is_file():
        raise click.BadParameter(f"{file!r} is not a Python file", param_hint="FILE::CLASS")
    return path, class_name or None


def load_app_class(path: Path, class_name: str | None) -> type[App]:
    """Imports the app file and picks its App class; `InvalidInput` when that fails."""
    try:
        return sdk_loader.load_app_class(path, class_name)
    except FalrtError:
        raise
    except Exception as exc:  # user code: any failure is the app's, reported as such
        raise InvalidInput(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc


def build_header(
    cls: type[App], bundle: Bundle, *, app_name: str | None, message: str
) -> control_pb2.DeployHeader:
    """The first message of the deploy stream, describing `cls` and its bundle."""
    return to_deploy_header(
        describe(cls), bundle_sha256=bundle.sha256, bundle_size=len(bundle.data),
        message=message, app_name=app_name,
    )


AUTH_MODES = names(AppAuth)
STRATEGIES = {DeployStrategy.ROLLING: control_pb2.STRATEGY_ROLLING,
              DeployStrategy.RECREATE: control_pb2.STRATEGY_RECREATE}
strategy_option = click.option(
    "--strategy", type=click.Choice(names(DeployStrategy)), default=DeployStrategy.ROLLING.value,
    show_default=True,
    help="rolling: a runner of the new revision starts first and the switch waits until it "
         "is ready (if it fails, the old revision keeps serving); recreate: switch at once")


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--annotation")
        pairs[key] = value
    return pairs


@click.command()
@click.argument("app_ref", metavar="FILE::CLASS")
@click.option("--app-name", default=None, help="deploy under this name (default: the class's)")
@click.option("--message", default="", help="a note stored with the revision")
@click.option("--reset-scale", is_flag=True,
              help="drop the settings `falrt apps scale` set; use the code's for everything")
@strategy_option
@click.option("--no-cache", is_flag=True,
              help="rebuild the app's environment from scratch (no cached layers or venv)")
@env_option
@click.option("--auth", type=click.Choice(AUTH_MODES), default=None,
              help="who may call the app: private (keys of its owner; the default), public "
                   "(anyone), shared (any valid key); overrides the class's app_auth")
@click.option("--annotation", "annotations", multiple=True, metavar="KEY=VALUE",
              help="a label stored with the revision (repeatable), e.g. commit=3f2a1c")
@click.option("--wait", is_flag=True,
              help="return once a runner of the new revision is ready; if its setup fails, "
                   "exit 5 with the startup error")
@click.option("--force", is_flag=True,
              help="make a new revision even when nothing changed since the live one")
@output_option
@pass_cli
def deploy(
    cli: CliContext, app_ref: str, app_name: str | None, message: str, reset_scale: bool,
    strategy: str, no_cache: bool, env: str, auth: str | None, annotations: tuple[str, ...],
    wait: bool, force: bool, output: OutputFormat,
) -> None:
    """Deploy an app; print its endpoint id.

    FILE::CLASS names the App class (FILE alone when it defines just one). Progress and
    build logs go to stderr.
    """
    path, class_name = parse_app_ref(app_ref)
    with reporting_errors(cli.host):
        cls = load_app_class(path, class_name)
        bundle = pack(path, cls)
        header = build_header(cls, bundle, app_name=app_name, message=message)
        header.reset_scale = reset_scale
        header.strategy = STRATEGIES[DeployStrategy(strategy)]
        header.annotations.update(_pairs(annotations))
        header.environment = env
        header.no_cache = no_cache
        header.wait = wait
        header.force = force
        if auth:
            header.settings.app_auth = auth
        stderr.print(f"deploying {header.app_name} ({len(bundle.data)} bytes, "
                     f"sha256 {bundle.sha256[:12]})", highlight=False)
        with ControlClient(cli.host, **cli.connect) as control:
            result = follow_deploy(control.deploy(header, bundle.data))
            kept = control.get_app(result.app_name).scale_overrides
    if output == "json":
        print_json({"endpoint_id": result.endpoint_id, "app_name": result.app_name,
                    "revision_id": result.revision_id,
                    "status": "unchanged" if result.unchanged else "deployed",
                    "unchanged": result.unchanged})
        return
    if result.unchanged:
        stderr.print(f"unchanged: revision {result.revision_id} already serves this; no new "
                     "revision (`falrt deploy --force` makes one)", style="green",
                     highlight=False)
        click.echo(result.endpoint_id)
        return
    stderr.print(f"deployed {result.app_name}, revision {result.revision_id}", style="green",
                 highlight=False)
    if not wait:
        stderr.print("its runners start when they are needed; `falrt deploy --wait` waits "
                     "until one is ready", style="dim", highlight=False)
    if kept.ByteSize():
        settings = ", ".join(f"{field.name}={_text(value)}" for field, value in kept.ListFields())
        stderr.print(f"kept the settings `falrt apps scale` set: {settings} "
                     "(`falrt deploy --reset-scale` drops them)", highlight=False)
    click.echo(result.endpoint_id)


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str | int):
        return str(value)
    return ",".join(str(v) for v in value)  # type: ignore[attr-defined]


def follow_deploy(responses: Iterable[control_pb2.DeployResponse]) -> control_pb2.DeployResult:
    """Shows progress and build logs on stderr; the final result. CliError if none came."""
    result: control_pb2.DeployResult | None = None
    with stderr.status("uploading") as spinner:
        for response in responses:
            item = response.WhichOneof("item")
            if item == "progress":
                spinner.update(_progress_text(response.progress))
            elif item == "log":
                stderr.print(f"  {response.log.message}", style="dim", markup=False,
                             highlight=False)
            elif item == "result":
                result = response.result
    if result is None:
        raise CliError("the server ended the deploy without a result")
    return result


def _progress_text(progress: control_pb2.DeployProgress) -> str:
    stage = control_pb2.DeployStage.Name(progress.stage).removeprefix("DEPLOY_STAGE_")
    percent = f" {progress.fraction:.0%}" if progress.fraction else ""
    return f"{stage}{percent} {progress.message}".rstrip()
