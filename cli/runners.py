"""`falrt runners list`: the runners serving apps."""

from __future__ import annotations

import click

from falrt.client.control import ControlClient
from falrt.v1 import common_pb2, control_pb2

from .context import CliContext, pass_cli
from .errors import reporting_errors
from .render import OutputFormat, age, output_option, print_protos, print_table


@click.group()
def runners() -> None:
    """Runners of deployed apps."""


@runners.command("list")
@click.option("--app", "app_name", default="", help="only this app's runners")
@output_option
@pass_cli
def list_runners(cli: CliContext, app_name: str, output: OutputFormat) -> None:
    """List runners (all, or one app's)."""
    with reporting_errors(cli.host), ControlClient(cli.host) as control:
        infos = control.list_runners(app_name)
    if output == "json":
        print_protos(infos)
        return
    print_table(
        "Runners",
        ["runner id", "app", "revision", "state", "in flight", "machine", "started"],
        [_row(r) for r in infos],
    )


def _row(runner: control_pb2.RunnerInfo) -> list[str]:
    state = common_pb2.RunnerState.Name(runner.state).removeprefix("RUNNER_STATE_")
    in_flight = f"{len(runner.in_flight_request_ids)}/{runner.max_multiplexing}"
    return [runner.runner_id, runner.app_name, runner.revision_id, state, in_flight,
            runner.machine_type or "-", age(runner.started_at)]
