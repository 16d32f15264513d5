"""`falrt queue size|flush APP`: an app's persistent queue."""

from __future__ import annotations

import click

from falrt.client.control import ControlClient

from .context import CliContext, app_argument, pass_cli
from .errors import reporting_errors
from .render import OutputFormat, output_option, print_json, stdout


@click.group()
def queue() -> None:
    """An app's queue of waiting requests."""


@queue.command("size")
@app_argument("app")
@output_option
@pass_cli
def size(cli: CliContext, app: str, output: OutputFormat) -> None:
    """How many requests of APP wait IN_QUEUE."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        count = control.queue_size(app)
    if output == "json":
        print_json({"app": app, "size": count})
    else:
        stdout.print(f"{app}: {count} queued")


@queue.command("flush")
@app_argument("app")
@output_option
@pass_cli
def flush(cli: CliContext, app: str, output: OutputFormat) -> None:
    """Cancel every queued request of APP (each completes with client_cancelled)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        count = control.flush_queue(app)
    if output == "json":
        print_json({"app": app, "flushed": count})
    else:
        stdout.print(f"{app}: flushed {count}")
