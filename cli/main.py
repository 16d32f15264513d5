"""The `falrt` command: a thin click adapter over the falrt client and server.

Each command parses its arguments, calls one library function or RPC, and renders the answer.
Exit codes are listed in `falrt.cli.errors`.
"""

from __future__ import annotations

from pathlib import Path

import click

from falrt.client.connection import (
    DEFAULT_HOST,
    HOST_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    ConnectOptions,
)

from .apps import apps
from .call import call
from .certs import certs
from .context import CliContext
from .deploy import deploy
from .envs import envs, keys, secrets
from .images import images
from .login import login, logout
from .queue import queue
from .requests import requests
from .runners import runners
from .server import server

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    envvar=HOST_ENV,
    default=DEFAULT_HOST,
    show_default=True,
    help=f"falrt server address, HOST:PORT, or https://HOST:PORT for TLS (env {HOST_ENV})",
)
@click.option("--tls-ca", envvar=TLS_CA_ENV, type=_FILE, default=None,
              help=f"verify the server's TLS certificate with this CA (PEM); implies TLS "
                   f"(env {TLS_CA_ENV})")
@click.option("--tls-client-cert", envvar=TLS_CERT_ENV, type=_FILE, default=None,
              help=f"the client certificate (PEM) a mutual-TLS server asks for (env "
                   f"{TLS_CERT_ENV})")
@click.option("--tls-client-key", envvar=TLS_KEY_ENV, type=_FILE, default=None,
              help=f"the key of --tls-client-cert (env {TLS_KEY_ENV})")
@click.version_option(package_name="falrt")
@click.pass_context
def main(
    ctx: click.Context, host: str, tls_ca: Path | None, tls_client_cert: Path | None,
    tls_client_key: Path | None,
) -> None:
    """falrt: a self-hosted, gRPC-native serverless runtime for ML inference.

    API keys are sent only to the server they belong to: $FALRT_KEY, else the key recorded
    for --host (by `falrt server` on its first start, or `falrt login`)."""
    if (tls_client_cert is None) != (tls_client_key is None):
        raise click.UsageError("--tls-client-cert and --tls-client-key go together")
    ctx.obj = CliContext(host=host, connect=ConnectOptions(
        tls_ca=tls_ca, tls_client_cert=tls_client_cert, tls_client_key=tls_client_key))


for command in (server, deploy, apps, runners, call, requests, queue, envs, secrets, keys, images,
                login, logout, certs):
    main.add_command(command)
