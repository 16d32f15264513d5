"""Rendering for people (rich tables and progress on stderr) and scripts (JSON on stdout).

Only the CLI prints. Results go to stdout; progress, logs and tables' decorations for people
go where each function says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import click
import msgspec
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from .json_shapes import message_json

OutputFormat = Literal["table", "json"]
M = TypeVar("M", bound=Message)

output_option = click.option(
    "--output",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts",
)

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def print_json(value: Any, *, indent: int = 2) -> None:
    """`value` as JSON on stdout (`indent=0`: one compact line)."""
    encoded = msgspec.json.encode(value)
    text = msgspec.json.format(encoded, indent=indent) if indent else encoded
    click.echo(text.decode())


def print_protos(messages: Sequence[Message]) -> None:
    """Messages as a JSON array of their documented shapes (`json_shapes`)."""
    print_json([message_json(m) for m in messages])


def print_done(output: OutputFormat, shape: dict[str, Any], text: str,
               style: str | None = None) -> None:
    """A mutating command's answer: `shape` as JSON on stdout (`--output json`), else `text`
    for people on stderr."""
    if output == "json":
        print_json(shape)
        return
    stderr.print(text, style=style, highlight=False)


def print_listing(
    output: OutputFormat, messages: Sequence[M], title: str, columns: Sequence[str],
    row: Callable[[M], Sequence[str]],
) -> None:
    """A list command's answer: the messages as JSON (`--output json`), else a table of one
    `row` per message."""
    if output == "json":
        print_protos(messages)
        return
    print_table(title, columns, [row(m) for m in messages])


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on stdout; cells never wrap, so ids stay whole and copyable."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # Measured without the terminal's limit, and printed on a console that wide (a
    # `print(width=)` is capped at the console's width, which truncated long ids with "…").
    needed = Measurement.get(stdout, stdout.options.update_width(10_000), table).maximum
    width = stdout.width
    stdout.width = max(width, needed)
    try:
        stdout.print(table)
    finally:
        stdout.width = width


def age(timestamp: Timestamp, now: datetime | None = None) -> str:
    """How long ago `timestamp` was, e.g. "4m12s"; "-" when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    now = now or datetime.now(UTC)
    seconds = max(0, int((now - timestamp.ToDatetime(tzinfo=UTC)).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def say(text: str, style: str | None = None) -> None:
    """A line for the person at the terminal (stderr), never markup."""
    stderr.print(text, style=style, markup=False, highlight=False)
