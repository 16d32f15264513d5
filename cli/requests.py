"""`falrt requests status|result|cancel`: one request of the queue, by id."""

from __future__ import annotations

import click

from falrt.client import Completed, InProgress, Queued, RequestError, Status, SyncClient

from .context import CliContext, pass_cli
from .errors import NotFound, reporting_errors
from .render import OutputFormat, output_option, print_json, stdout


@click.group()
def requests() -> None:
    """Requests of the queue."""


@requests.command("status")
@click.argument("request_id")
@click.option("--logs", "with_logs", is_flag=True, help="include the request's log lines")
@output_option
@pass_cli
def status(cli: CliContext, request_id: str, with_logs: bool, output: OutputFormat) -> None:
    """Show where a request stands: IN_QUEUE, IN_PROGRESS or COMPLETED."""
    with reporting_errors(cli.host), SyncClient(cli.host, **cli.connect) as client:
        current = client.status(request_id, with_logs=with_logs)
    if output == "json":
        print_json(current)
        return
    stdout.print(describe(current), highlight=False)
    for line in getattr(current, "logs", ()):
        stdout.print(f"  {line.timestamp:%H:%M:%S} {line.message}", markup=False,
                     highlight=False)


def describe(status: Status) -> str:
    """One line for people about a status."""
    match status:
        case Queued(position=position, waiting_reason=reason):
            return f"IN_QUEUE, position {position}" + (f" ({reason})" if reason else "")
        case InProgress():
            return "IN_PROGRESS"
        case Completed(error=RequestError(error_type=error_type, message=message)):
            return f"COMPLETED with error {error_type}: {message}"
        case Completed():
            return "COMPLETED"


@requests.command("result")
@click.argument("request_id")
@pass_cli
def result(cli: CliContext, request_id: str) -> None:
    """Print the output of a completed request as JSON (its error, if it failed)."""
    with reporting_errors(cli.host), SyncClient(cli.host, **cli.connect) as client:
        print_json(client.result(request_id))


@requests.command("cancel")
@click.argument("request_id")
@output_option
@pass_cli
def cancel(cli: CliContext, request_id: str, output: OutputFormat) -> None:
    """Cancel a request; prints CANCELLATION_REQUESTED or ALREADY_COMPLETED (as JSON:
    `{"request_id": ..., "outcome": "cancellation_requested"}` or `"already_completed"`)."""
    with reporting_errors(cli.host), SyncClient(cli.host, **cli.connect) as client:
        outcome = client.cancel(request_id)
    if outcome == "NOT_FOUND":
        raise NotFound(f"request {request_id} not found")
    if output == "json":
        print_json({"request_id": request_id, "outcome": outcome.lower()})
        return
    click.echo(outcome)
