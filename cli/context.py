"""What every command gets from the root group: where the server is, and how to reach it.

The global options (`--host` and the `--tls-*` client options) are defined once, here, and
accepted both before the subcommand (`falrt --host H apps list`) and after it, as people type
them (`falrt apps list --host H`): `pass_cli` adds them to every command that talks to a
server. A value given after the subcommand wins over one given before it; both read the same
environment variables and defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from falrt.client.connection import (
    DEFAULT_HOST,
    HOST_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    ConnectOptions,
)
from falrt.names import MAIN, full_name

P = ParamSpec("P")
R = TypeVar("R")
_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@dataclass(frozen=True)
class CliContext:
    """Global options, parsed once by the root group (and overridden by a command's own)."""

    host: str  # HOST:PORT, or https://HOST:PORT
    # --tls-ca and the client certificate; passed to every client as they are
    connect: ConnectOptions = field(default_factory=lambda: ConnectOptions())


# The global options: (parameter name, click option). One definition for the root group and
# for every command.
GLOBAL_OPTIONS: tuple[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    ("host", click.option(
        "--host", "host", envvar=HOST_ENV, default=DEFAULT_HOST, show_default=True,
        help=f"falrt server address, HOST:PORT, or https://HOST:PORT for TLS (env {HOST_ENV})")),
    ("tls_ca", click.option(
        "--tls-ca", "tls_ca", envvar=TLS_CA_ENV, type=_FILE, default=None,
        help=f"verify the server's TLS certificate with this CA (PEM); implies TLS "
             f"(env {TLS_CA_ENV})")),
    ("tls_client_cert", click.option(
        "--tls-client-cert", "tls_client_cert", envvar=TLS_CERT_ENV, type=_FILE, default=None,
        help=f"the client certificate (PEM) a mutual-TLS server asks for (env "
             f"{TLS_CERT_ENV})")),
    ("tls_client_key", click.option(
        "--tls-client-key", "tls_client_key", envvar=TLS_KEY_ENV, type=_FILE, default=None,
        help=f"the key of --tls-client-cert (env {TLS_KEY_ENV})")),
)
GLOBAL_NAMES = tuple(name for name, _ in GLOBAL_OPTIONS)


def global_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Adds the global options to a command (or the root group); it receives them by name."""
    decorated: Callable[..., Any] = fn
    for _, option in reversed(GLOBAL_OPTIONS):
        decorated = option(decorated)
    return decorated


def make_context(
    host: str, tls_ca: Path | None = None, tls_client_cert: Path | None = None,
    tls_client_key: Path | None = None,
) -> CliContext:
    """The context from the global options' values (`pass_cli` checks them)."""
    return CliContext(host=host, connect=ConnectOptions(
        tls_ca=tls_ca, tls_client_cert=tls_client_cert, tls_client_key=tls_client_key))


def pass_cli(fn: Callable[Concatenate[CliContext, P], R]) -> Callable[P, R]:
    """Adds the global options to a command and passes it the `CliContext`: the root group's,
    with the options given on the command line after the subcommand put over it."""

    @functools.wraps(fn)
    def command(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        given = {name: kwargs.pop(name) for name in GLOBAL_NAMES}
        ctx.obj = cli = _merged(ctx, ctx.find_object(CliContext), given)
        return fn(cli, *args, **kwargs)

    return global_options(command)


def _merged(ctx: click.Context, root: CliContext | None, given: dict[str, Any]) -> CliContext:
    """`root` with the options given on the command line put over it (all of `given`, from
    the command line, the environment or defaults, when there is no root)."""
    values = dict(given)
    if root is not None:
        values = {"host": root.host, **{name: root.connect.get(name) for name in GLOBAL_NAMES
                                        if name != "host"}}
        values.update({name: value for name, value in given.items()
                       if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE})
    if (values["tls_client_cert"] is None) != (values["tls_client_key"] is None):
        raise click.UsageError("--tls-client-cert and --tls-client-key go together")
    return make_context(**values)


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
