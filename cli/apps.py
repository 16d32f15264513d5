"""`falrt apps list|get|openapi|scale|runners|revisions|delete-rev|rollback|rollout|delete`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from falrt import openapi
from falrt.client.control import ControlClient
from falrt.sdk.endpoints import EndpointKind
from falrt.v1 import control_pb2
from falrt.vocabulary import AppAuth, DeployStrategy

from .context import CliContext, app_argument, env_option, pass_cli
from .deploy import AUTH_MODES, STRATEGIES, follow_deploy, strategy_option
from .errors import reporting_errors
from .json_shapes import message_json, timestamp_json
from .render import (
    OutputFormat,
    age,
    output_option,
    print_done,
    print_json,
    print_listing,
    print_protos,
    print_table,
    stdout,
)
from .runners import print_runners, state_name, state_option, state_values

F = TypeVar("F", bound=Callable[..., Any])
@click.group()
def apps() -> None:
    """Deployed apps."""


@apps.command("list")
@env_option
@output_option
@pass_cli
def list_apps(cli: CliContext, env: str, output: OutputFormat) -> None:
    """List the apps of an environment."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        infos = control.list_apps(env)
    print_listing(
        output, infos, "Apps",
        ["name", "endpoint id", "revision", "entrypoint", "runners", "queued", "updated"],
        lambda a: [a.name, a.endpoint_id, a.revision_id, a.entrypoint, str(a.active_runners),
                   str(a.queue_size), age(a.updated_at)],
    )


@apps.command("get")
@app_argument()
@output_option
@pass_cli
def get_app(cli: CliContext, name: str, output: OutputFormat) -> None:
    """Show one app, its live revision and its endpoints."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        info = control.get_app(name)
    if output == "json":
        print_json(message_json(info))
        return
    stdout.print(f"[bold]{info.name}[/]  {info.endpoint_id}  revision {info.revision_id}",
                 highlight=False)
    stdout.print(f"entrypoint {info.entrypoint}, {info.active_runners} runner(s), "
                 f"{info.queue_size} queued", highlight=False)
    stdout.print(f"scaling lead: {_lead_text(info.scaling_lead)}", highlight=False)
    print_table("Endpoints", ["path", "method", "kind"],
                [[e.path, e.name, _kind_name(e.kind)] for e in info.endpoints])


def _lead_text(lead: control_pb2.ScalingLead) -> str:
    """Which server makes the app's scaling decisions, in words."""
    if not lead.shared:
        return f"{lead.server_id or 'this server'} (this server, alone on its store)"
    if not lead.server_id:
        return "none now (a live server takes the lease within the server lease)"
    whose = "this server" if lead.this_server else "another server"
    return f"{lead.server_id} ({whose}; its lease runs until {timestamp_json(lead.lease_until)})"


@apps.command("openapi")
@app_argument()
@click.option("--output", "output_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="write the document to this file instead of stdout")
@click.option("--server-url", default="",
              help="the gateway's URL, e.g. https://falrt.example.com:8443 (the document's "
                   "server; none when not given)")
@pass_cli
def app_openapi(cli: CliContext, name: str, output_file: Path | None, server_url: str) -> None:
    """Print the app's OpenAPI document (the gateway serves the same one at
    /OWNER/APP/openapi.json)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        info = control.get_app(name)
    document = openapi.build(info.endpoint_id, info.endpoints, auth=info.auth or AppAuth.PRIVATE,
                             version=info.revision_id, server_url=server_url)
    if output_file is None:
        print_json(document)
        return
    try:
        output_file.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output_file}: {exc.strerror}") from None
    click.echo(f"wrote {output_file}", err=True)


# `falrt apps scale` flags: (flag, AppSettings field, type, help).
_SCALE_FLAGS: list[tuple[str, str, click.ParamType[Any], str]] = [
    ("--min-concurrency", "min_concurrency", click.IntRange(min=0), "runners kept alive"),
    ("--max-concurrency", "max_concurrency", click.IntRange(min=0), "most runners"),
    ("--concurrency-buffer", "concurrency_buffer", click.IntRange(min=0),
     "extra warm runners beyond demand"),
    ("--concurrency-buffer-perc", "concurrency_buffer_perc", click.FloatRange(min=0),
     "extra warm runners as a percentage of demand"),
    ("--keep-alive", "keep_alive_s", click.FloatRange(min=0), "seconds an idle runner lives"),
    ("--scaling-delay", "scaling_delay_s", click.FloatRange(min=0),
     "seconds a request waits before it makes the app scale up"),
    ("--request-timeout", "request_timeout_s", click.FloatRange(min=0),
     "seconds an attempt may run"),
    ("--max-multiplexing", "max_multiplexing", click.IntRange(min=1),
     "requests per runner (code-specific: new runners; reset by the next deploy)"),
    ("--startup-timeout", "startup_timeout_s", click.FloatRange(min=0),
     "seconds setup() may take (code-specific: reset by the next deploy)"),
]


def _scale_options(command: F) -> F:
    for flag, field, kind, text in reversed(_SCALE_FLAGS):
        command = click.option(flag, field, type=kind, default=None, help=text)(command)
    return click.option(
        "--machine-types", "machine_types", multiple=True,
        help="machine types in order of preference, repeatable (code-specific: new "
             "runners; reset by the next deploy)")(command)


@apps.command("scale")
@app_argument()
@_scale_options
@output_option
@pass_cli
def scale_app(cli: CliContext, /, name: str, output: OutputFormat, **values: object) -> None:
    """Change an app's scaling settings now, without a deploy.

    The runtime-tunable ones (concurrency, buffers, keep-alive, scaling delay, request
    timeout) survive the next deploy; the code-specific ones (max multiplexing, startup
    timeout, machine types) last until it. `falrt deploy --reset-scale` drops them all.
    """
    settings = control_pb2.AppSettings(
        machine_types=values.pop("machine_types"),  # type: ignore[arg-type]
        **{k: v for k, v in values.items() if v is not None},  # type: ignore[arg-type]
    )
    if settings.ByteSize() == 0:
        raise click.UsageError("nothing to change: give at least one setting (see --help)")
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        info = control.scale_app(name, settings)
    if output == "json":
        print_json(message_json(info))
        return
    print_scale(info)


def print_scale(info: control_pb2.AppInfo) -> None:
    """The app's scaling settings in force, and which of them are overrides."""
    overrides = info.scale_overrides
    rows = []
    for _, field, _, _ in _SCALE_FLAGS:
        value = getattr(info.effective, field)
        source = "scale" if overrides.HasField(field) else "code or default"  # type: ignore[arg-type]
        rows.append([field, f"{value:g}" if isinstance(value, float) else str(value), source])
    machines = ", ".join(info.effective.machine_types)
    rows.append(["machine_types", machines,
                 "scale" if overrides.machine_types else "code or default"])
    print_table(f"Scaling of {info.name}", ["setting", "value", "from"], rows)


@apps.command("runners")
@app_argument()
@state_option
@output_option
@pass_cli
def app_runners(cli: CliContext, name: str, states: tuple[str, ...], output: OutputFormat) -> None:
    """An app's runners: counts by state, the runners, and the requests they run."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        control.get_app(name)  # NOT_FOUND for an unknown app
        infos = control.list_runners(name, state_values(states))
    if output == "json":
        print_protos(infos)
        return
    counts = Counter(state_name(r.state) for r in infos)
    stdout.print(", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
                 or "no runners", highlight=False)
    print_runners(infos)
    print_table("In flight", ["runner id", "request id"],
                [[r.runner_id, i] for r in infos for i in r.in_flight_request_ids])


@apps.command("revisions")
@app_argument()
@output_option
@pass_cli
def list_revisions(cli: CliContext, name: str, output: OutputFormat) -> None:
    """An app's revisions, newest first (the live one marked)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        revisions = control.list_revisions(name)
    print_listing(
        output, revisions, f"Revisions of {name}",
        ["revision", "live", "created", "bundle", "message", "annotations"],
        lambda r: [r.revision_id, "*" if r.live else "", age(r.created_at), r.bundle_sha256[:12],
                   r.message or "-",
                   ", ".join(f"{k}={v}" for k, v in sorted(r.annotations.items())) or "-"],
    )


@apps.command("delete-rev")
@click.argument("revision_id")
@output_option
@pass_cli
def delete_revision(cli: CliContext, revision_id: str, output: OutputFormat) -> None:
    """Delete a revision that is not live."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        control.delete_revision(revision_id)
    print_done(output, {"revision_id": revision_id, "deleted": True}, f"deleted {revision_id}")


@apps.command("rollback")
@app_argument()
@click.argument("revision_id")
@strategy_option
@click.option("--auth", type=click.Choice(AUTH_MODES), default=None,
              help="change who may call the app (default: unchanged)")
@output_option
@pass_cli
def rollback(
    cli: CliContext, name: str, revision_id: str, strategy: str, auth: str | None,
    output: OutputFormat,
) -> None:
    """Make an earlier revision live again (no rebuild). Scale overrides of the
    runtime-tunable settings are kept; code-specific settings come from that revision."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        result = follow_deploy(
            control.rollback(name, revision_id, STRATEGIES[DeployStrategy(strategy)], auth or ""))
    print_done(output, message_json(result),
               f"{result.app_name} serves revision {result.revision_id}", style="green")


@apps.command("rollout")
@app_argument()
@click.option("--force", is_flag=True,
              help="kill every runner now (in-flight requests are retried) instead of "
                   "replacing them one by one")
@output_option
@pass_cli
def rollout(cli: CliContext, name: str, force: bool, output: OutputFormat) -> None:
    """Replace every runner of the live revision (to pick up new secrets, machine types, or
    to clear a runner's state); graceful by default: replacements first, then drain."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        reply = control.rollout(name, force=force)
    text = (f"killed {len(reply.runner_ids)} runner(s)" if force else
            f"replacing {len(reply.runner_ids)} runner(s): "
            f"{', '.join(reply.replacement_runner_ids) or 'none running'}")
    print_done(output, {"app_name": name, "force": force, **message_json(reply)}, text)


@apps.command("delete")
@app_argument()
@output_option
@pass_cli
def delete_app(cli: CliContext, name: str, output: OutputFormat) -> None:
    """Delete an app: its runners stop and its queued requests fail."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        control.delete_app(name)
    print_done(output, {"app_name": name, "deleted": True}, f"deleted {name}")


def _kind_name(number: int) -> str:
    try:
        return EndpointKind.from_number(number).value
    except ValueError:
        return "?"
