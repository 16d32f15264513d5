"""What every command gets from the root group: where the server is, and how to reach it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from falrt.client.connection import ConnectOptions
from falrt.names import MAIN, full_name

R = TypeVar("R")


@dataclass(frozen=True)
class CliContext:
    """Global options, parsed once by the root group."""

    host: str  # HOST:PORT, or https://HOST:PORT
    # --tls-ca and the client certificate; passed to every client as they are
    connect: ConnectOptions = field(default_factory=lambda: ConnectOptions())


pass_cli = click.make_pass_decorator(CliContext)


ENV_HELP = "the environment (env FALRT_ENV; default main)"
env_option = click.option("--env", "env", envvar="FALRT_ENV", default=MAIN, show_default=True,
                          help=ENV_HELP)


def app_argument(param: str = "name") -> Callable[[Callable[..., R]], Callable[..., R]]:
    """An APP argument plus `--env`: the command receives the app's full name (`x`, or
    `x--staging` outside main), as the server knows it."""

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(fn)
        def command(*args: Any, env: str, **kwargs: Any) -> R:
            kwargs[param] = full_name(kwargs[param], env)
            return fn(*args, **kwargs)

        return click.argument(param)(env_option(command))

    return decorate
