"""`falrt server`: run the falrt server in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from falrt.settings import DEFAULT_LISTEN, DEFAULT_OWNER, ServerSettings


@click.command()
@click.option("--listen", envvar="FALRT_LISTEN", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to serve on (env FALRT_LISTEN)")
@click.option("--data-dir", envvar="FALRT_DATA_DIR", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="where the store, bundles and runner environments live (env FALRT_DATA_DIR)")
@click.option("--owner", envvar="FALRT_OWNER", default=DEFAULT_OWNER, show_default=True,
              help="owner part of endpoint ids, owner/app (env FALRT_OWNER)")
def server(listen: str, data_dir: Path | None, owner: str) -> None:
    """Run the falrt server until interrupted."""
    from falrt.server.main import run  # the server's dependencies load only for this command

    run(build_settings(listen=listen, data_dir=data_dir, owner=owner))


def build_settings(*, listen: str, data_dir: Path | None, owner: str) -> ServerSettings:
    """Server settings from the command's options; unset options keep the defaults."""
    overrides: dict[str, Any] = {"listen": listen, "owner": owner}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.expanduser().resolve()
    return ServerSettings(**overrides)
