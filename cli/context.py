"""What every command gets from the root group: where the server is."""

from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass(frozen=True)
class CliContext:
    """Global options, parsed once by the root group."""

    host: str


pass_cli = click.make_pass_decorator(CliContext)
