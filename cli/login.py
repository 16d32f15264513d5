"""`falrt login` and `falrt logout`: record or forget the API key for one server (--host).

The key is read from standard input, never from an argument (the process list would show
it). It is sent to that server only (`falrt.client.credentials`).
"""

from __future__ import annotations

import sys

import click

from falrt.client import credentials
from falrt.client.connection import TLS_CA_ENV

from .context import CliContext, pass_cli


@click.command()
@pass_cli
def login(cli: CliContext) -> None:
    """Record an API key (KEY_ID:SECRET, read from standard input) for the server --host
    names; calls to that server send it, and no other server gets it."""
    if sys.stdin.isatty():
        key = click.prompt("API key (KEY_ID:SECRET)", hide_input=True, err=True)
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if key.count(":") != 1 or any(c.isspace() for c in key) or key.startswith(":"):
        raise click.UsageError("an API key reads KEY_ID:SECRET (`falrt keys create` prints one)")
    address = credentials.normalise(cli.host)
    path = credentials.save(cli.host, key)
    click.echo(f"recorded a key for {address} in {path}")
    if not _secure(cli) and not credentials.is_local(cli.host):
        click.echo(f"note: it is sent over TLS only: use --host https://{address} or "
                   f"--tls-ca FILE (env {TLS_CA_ENV})", err=True)


@click.command()
@pass_cli
def logout(cli: CliContext) -> None:
    """Forget the API key recorded for the server --host names."""
    address = credentials.normalise(cli.host)
    if credentials.forget(cli.host):
        click.echo(f"forgot the key for {address}")
    else:
        click.echo(f"no key was recorded for {address}")


def _secure(cli: CliContext) -> bool:
    return cli.host.lower().startswith("https://") or bool(cli.connect.get("tls_ca"))
