"""`falrt call`: call a deployed endpoint through the queue, directly, or as a stream."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click
import msgspec

from falrt.client import Completed, InProgress, LogLine, Queued, Status, SyncClient
from falrt.client.endpoint import split_endpoint_ref
from falrt.client.messages import PriorityName, QueueOptions
from falrt.errors import FalrtError, InvalidArgumentError
from falrt.names import MAIN, SEPARATOR, full_name

from .context import CliContext, pass_cli
from .errors import Interrupted, reporting_errors
from .render import print_json, stderr


def parse_data(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    """The `--data` option: JSON text, or `@path` of a JSON file; a usage error otherwise."""
    try:
        text = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from exc
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc


def parse_endpoint(ref: str, path: str | None) -> tuple[str, str]:
    """`(endpoint_id, path)` from the arguments; a usage error for a malformed id."""
    try:
        return split_endpoint_ref(ref, path)
    except InvalidArgumentError as exc:
        raise click.BadParameter(exc.message, param_hint="ENDPOINT_ID") from exc


@click.command()
@click.argument("endpoint_ref", metavar="ENDPOINT_ID")
@click.argument("path", required=False)
@click.option("--data", "arguments", default="{}", show_default=True, callback=parse_data,
              help="input as JSON, or @file.json")
@click.option("--sync", "mode", flag_value="sync",
              help="call directly (Queue.Run): no queue record, no retries")
@click.option("--stream", "mode", flag_value="stream",
              help="call a streaming endpoint; print each partial output as a JSON line")
@click.option("--timeout", type=float, default=None,
              help="seconds to wait for the output (queue: then cancel; also the start timeout "
                   "unless --start-timeout is given)")
@click.option("--priority", type=click.Choice(["normal", "low"]), default="normal",
              show_default=True, help="queue priority")
@click.option("--start-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="seconds within which the request must start, or it fails")
@click.option("--no-retry", is_flag=True, help="never retry the request")
@click.option("--webhook", "webhook_url", default=None, help="URL POSTed the result")
@click.option("--idempotency-key", default=None,
              help="resubmitting with the same key returns the same request")
@click.option("--env", "env", envvar="FALRT_ENV", default=MAIN, show_default=True,
              help="the app's environment, when ENDPOINT_ID has no --ENV suffix (env FALRT_ENV)")
@pass_cli
def call(
    cli: CliContext, endpoint_ref: str, path: str | None, arguments: Any, mode: str | None,
    timeout: float | None, priority: PriorityName, start_timeout: float | None,
    no_retry: bool, webhook_url: str | None, idempotency_key: str | None, env: str,
) -> None:
    """Call an endpoint; print its output as JSON.

    ENDPOINT_ID is owner/app, or owner/app/sub/path. Through the queue by default: queue
    position and log lines go to stderr while it waits; Ctrl-C cancels the request.
    """
    endpoint_id, path = parse_endpoint(endpoint_ref, path)
    owner, _, app = endpoint_id.partition("/")
    if SEPARATOR not in app:
        endpoint_id = f"{owner}/{full_name(app, env)}"
    with reporting_errors(cli.host), SyncClient(cli.host, **cli.connect) as client:
        if mode == "sync":
            print_json(client.run(endpoint_id, arguments, path=path, timeout=timeout))
        elif mode == "stream":
            for partial in client.stream(endpoint_id, arguments, path=path, timeout=timeout):
                print_json(partial, indent=0)
        else:
            options: QueueOptions = {"priority": priority, "no_retry": no_retry}
            if start_timeout is not None:
                options["start_timeout"] = start_timeout
            if webhook_url:
                options["webhook_url"] = webhook_url
            if idempotency_key:
                options["idempotency_key"] = idempotency_key
            print_json(_through_queue(client, endpoint_id, path, arguments, timeout, options))


def _through_queue(
    client: SyncClient, endpoint_id: str, path: str, arguments: Any, timeout: float | None,
    options: QueueOptions,
) -> Any:
    reporter = QueueReporter()
    try:
        return client.subscribe(
            endpoint_id, arguments, path=path, with_logs=True, on_enqueue=reporter.enqueued,
            on_queue_update=reporter.update, client_timeout=timeout, **options,
        )
    except KeyboardInterrupt:
        if reporter.request_id is None:
            raise Interrupted("interrupted before the request was stored") from None
        with contextlib.suppress(FalrtError):
            client.cancel(reporter.request_id)
        raise Interrupted(f"interrupted: cancellation of {reporter.request_id} requested") from None


class QueueReporter:
    """Tells a person on stderr where a queued request stands, without repeating itself."""

    def __init__(self) -> None:
        self.request_id: str | None = None
        self._last: tuple[str, int, str] | None = None

    def enqueued(self, request_id: str) -> None:
        self.request_id = request_id
        stderr.print(f"request {request_id}", style="bold", highlight=False)

    def update(self, status: Status) -> None:
        match status:
            case Queued(position=position, waiting_reason=reason):
                # Each new waiting reason is news (a startup failure, a retry's countdown),
                # even when the position stays the same.
                self._say(("queued", position, reason), f"in queue, position {position}"
                          + (f" ({reason})" if reason else ""))
            case InProgress(logs=logs):
                self._say(("running", 0, ""), "in progress")
                self._logs(logs)
            case Completed(logs=logs, error=error, inference_time_s=seconds):
                self._logs(logs)
                self._say(("done", 0, ""), _completion(error is not None, seconds))

    def _say(self, key: tuple[str, int, str], text: str) -> None:
        if key != self._last:
            self._last = key
            stderr.print(text, style="cyan", highlight=False)

    def _logs(self, logs: tuple[LogLine, ...]) -> None:
        for line in logs:
            stderr.print(f"  {line.message}", style="dim", markup=False, highlight=False)


def _completion(failed: bool, seconds: float | None) -> str:
    """The last progress line: a failed request did not complete, and its (absent or zero)
    inference time says nothing, so only a success reports one."""
    if failed:
        return "failed"
    return f"completed in {seconds:.3f} s" if seconds is not None else "completed"
