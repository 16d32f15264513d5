"""`falrt runners list|stop|kill|logs`: the runners serving apps."""

from __future__ import annotations

from collections.abc import Sequence

import click

from falrt.client.control import ControlClient
from falrt.names import full_name
from falrt.v1 import common_pb2, control_pb2

from .context import CliContext, pass_cli
from .errors import reporting_errors
from .json_shapes import message_json
from .render import OutputFormat, age, output_option, print_done, print_protos, print_table

STATE_NAMES = [name.removeprefix("RUNNER_STATE_").lower()
               for name in common_pb2.RunnerState.keys()[1:]]
state_option = click.option(
    "--state", "states", multiple=True, type=click.Choice([*STATE_NAMES, "all"]),
    help="only runners in this state (repeatable); `terminated` and `all` include runners "
         "that ended lately")


def state_values(states: Sequence[str]) -> list[int]:
    """RunnerState values for --state choices ([] for every live runner)."""
    names = STATE_NAMES if "all" in states else states
    return [common_pb2.RunnerState.Value(f"RUNNER_STATE_{name.upper()}") for name in names]


def state_name(value: int) -> str:
    return common_pb2.RunnerState.Name(value).removeprefix("RUNNER_STATE_")  # type: ignore[arg-type]


@click.group()
def runners() -> None:
    """Runners of deployed apps."""


@runners.command("list")
@click.option("--app", "app_name", default="", help="only this app's runners")
@click.option("--env", "env", envvar="FALRT_ENV", default="",
              help="only runners of this environment's apps (env FALRT_ENV; default: all)")
@state_option
@output_option
@pass_cli
def list_runners(
    cli: CliContext, app_name: str, env: str, states: tuple[str, ...], output: OutputFormat
) -> None:
    """List runners (all, or one app's, or those in some states)."""
    app = full_name(app_name, env) if app_name else ""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        infos = control.list_runners(app, state_values(states), env)
    if output == "json":
        print_protos(infos)
        return
    print_runners(infos)


def print_runners(infos: Sequence[control_pb2.RunnerInfo]) -> None:
    print_table(
        "Runners",
        ["runner id", "app", "revision", "state", "for", "in flight", "served", "machine",
         "node", "gpus", "started", "last error"],
        [_row(r) for r in infos],
    )


def _row(runner: control_pb2.RunnerInfo) -> list[str]:
    in_flight = f"{len(runner.in_flight_request_ids)}/{runner.max_multiplexing}"
    return [runner.runner_id, runner.app_name, runner.revision_id, state_name(runner.state),
            age(runner.state_since), in_flight, str(runner.served), runner.machine_type or "-",
            runner.node or "-", _gpus(runner), age(runner.started_at),
            runner.last_error[:80] or "-"]


def _gpus(runner: control_pb2.RunnerInfo) -> str:
    """Each GPU's memory in use and utilisation (from the last heartbeat), or its UUID."""
    if runner.gpu_stats:
        return ", ".join(f"{g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.0f}"
                         f" GiB {g.utilization_percent}%" for g in runner.gpu_stats)
    return ", ".join(uuid[:12] for uuid in runner.gpus) or "-"


@runners.command("stop")
@click.argument("runner_id")
@click.option("--replace", is_flag=True,
              help="start a replacement first; this runner drains once it is ready")
@output_option
@pass_cli
def stop_runner(cli: CliContext, runner_id: str, replace: bool, output: OutputFormat) -> None:
    """Stop a runner gracefully: it takes no new requests, finishes its in-flight ones,
    then exits (killed at the end of its termination grace period)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        reply = control.stop_runner(runner_id, replace=replace)
    text = (f"starting {reply.replacement_runner_id}; {runner_id} drains once it is ready"
            if reply.replacement_runner_id else f"{runner_id} is {state_name(reply.runner.state)}")
    shape = message_json(reply)
    shape["replacement_runner_id"] = reply.replacement_runner_id or None
    print_done(output, shape, text)


@runners.command("kill")
@click.argument("runner_id")
@output_option
@pass_cli
def kill_runner(cli: CliContext, runner_id: str, output: OutputFormat) -> None:
    """Kill a runner now; the requests it was running are retried."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        info = control.kill_runner(runner_id)
    print_done(output, {"runner": message_json(info)}, f"killed {runner_id}")


@runners.command("logs")
@click.argument("runner_id")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines until it ends")
@click.option("--tail", type=click.IntRange(min=0), default=0,
              help="only the last N lines of what is there (0: all)")
@pass_cli
def runner_logs(cli: CliContext, runner_id: str, follow: bool, tail: int) -> None:
    """Print a runner's output (its setup, prints and errors)."""
    with reporting_errors(cli.host), ControlClient(cli.host, **cli.connect) as control:
        for line in control.runner_logs(runner_id, follow=follow, tail=tail):
            click.echo(line)
