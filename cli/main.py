"""The `falrt` command: a thin click adapter over the falrt client and server.

Each command parses its arguments, calls one library function or RPC, and renders the answer.
Exit codes are listed in `falrt.cli.errors`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .apps import apps
from .call import call
from .certs import certs
from .context import global_options, make_context
from .deploy import deploy
from .envs import envs, keys, secrets
from .files import files
from .images import images
from .login import login, logout
from .queue import queue
from .requests import requests
from .run import run
from .runners import runners
from .server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option(package_name="falrt")
@click.pass_context
def main(
    ctx: click.Context, host: str, tls_ca: Path | None, tls_client_cert: Path | None,
    tls_client_key: Path | None,
) -> None:
    """falrt: a self-hosted, gRPC-native serverless runtime for ML inference.

    --host and the --tls-* options go before or after the subcommand (`falrt apps list
    --host H`). API keys are sent only to the server they belong to: $FALRT_KEY, else the key
    recorded for --host (by `falrt server` on its first start, or `falrt login`)."""
    ctx.obj = make_context(host, tls_ca, tls_client_cert, tls_client_key)


for command in (server, deploy, run, apps, runners, call, requests, queue, envs, secrets, keys,
                images, login, logout, certs, files):
    main.add_command(command)
