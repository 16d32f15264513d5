"""`falrt apps list|get|delete`: deployed apps."""

from __future__ import annotations

import click

from falrt.client.control import ControlClient
from falrt.v1 import control_pb2

from .context import CliContext, pass_cli
from .errors import reporting_errors
from .render import (
    OutputFormat,
    age,
    output_option,
    print_json,
    print_protos,
    print_table,
    proto_dict,
    stdout,
)

_KINDS = {control_pb2.ENDPOINT_KIND_UNARY: "unary", control_pb2.ENDPOINT_KIND_STREAM: "stream"}


@click.group()
def apps() -> None:
    """Deployed apps."""


@apps.command("list")
@output_option
@pass_cli
def list_apps(cli: CliContext, output: OutputFormat) -> None:
    """List all apps."""
    with reporting_errors(cli.host), ControlClient(cli.host) as control:
        infos = control.list_apps()
    if output == "json":
        print_protos(infos)
        return
    print_table(
        "Apps",
        ["name", "endpoint id", "revision", "entrypoint", "runners", "queued", "updated"],
        [[a.name, a.endpoint_id, a.revision_id, a.entrypoint, str(a.active_runners),
          str(a.queue_size), age(a.updated_at)] for a in infos],
    )


@apps.command("get")
@click.argument("name")
@output_option
@pass_cli
def get_app(cli: CliContext, name: str, output: OutputFormat) -> None:
    """Show one app, its live revision and its endpoints."""
    with reporting_errors(cli.host), ControlClient(cli.host) as control:
        info = control.get_app(name)
    if output == "json":
        print_json(proto_dict(info))
        return
    stdout.print(f"[bold]{info.name}[/]  {info.endpoint_id}  revision {info.revision_id}",
                 highlight=False)
    stdout.print(f"entrypoint {info.entrypoint}, {info.active_runners} runner(s), "
                 f"{info.queue_size} queued", highlight=False)
    print_table("Endpoints", ["path", "method", "kind"],
                [[e.path, e.name, _KINDS.get(e.kind, "?")] for e in info.endpoints])


@apps.command("delete")
@click.argument("name")
@pass_cli
def delete_app(cli: CliContext, name: str) -> None:
    """Delete an app: its runners stop and its queued requests fail."""
    with reporting_errors(cli.host), ControlClient(cli.host) as control:
        control.delete_app(name)
    click.echo(f"deleted {name}", err=True)
