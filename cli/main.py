"""The `falrt` command: a thin click adapter over the falrt client and server.

Each command parses its arguments, calls one library function or RPC, and renders the answer.
Exit codes are listed in `falrt.cli.errors`.
"""

from __future__ import annotations

import click

from falrt.client.connection import DEFAULT_HOST, HOST_ENV

from .apps import apps
from .call import call
from .context import CliContext
from .deploy import deploy
from .envs import envs, keys, secrets
from .images import images
from .queue import queue
from .requests import requests
from .runners import runners
from .server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    envvar=HOST_ENV,
    default=DEFAULT_HOST,
    show_default=True,
    help=f"falrt server address, HOST:PORT (env {HOST_ENV})",
)
@click.version_option(package_name="falrt")
@click.pass_context
def main(ctx: click.Context, host: str) -> None:
    """falrt: a self-hosted, gRPC-native serverless runtime for ML inference."""
    ctx.obj = CliContext(host=host)


for command in (server, deploy, apps, runners, call, requests, queue, envs, secrets, keys, images):
    main.add_command(command)
