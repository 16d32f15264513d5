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
@click.option("--store", envvar="FALRT_STORE", default="sqlite", show_default=True,
              help="sqlite (a file in the data dir), memory, or a postgresql://... DSN "
                   "(env FALRT_STORE)")
def server(listen: str, data_dir: Path | None, owner: str, store: str) -> None:
    """Run the falrt server until interrupted."""
    from falrt.server.main import run  # the server's dependencies load only for this command

    run(build_settings(listen=listen, data_dir=data_dir, owner=owner, store=store))


def build_settings(
    *, listen: str, data_dir: Path | None, owner: str, store: str = "sqlite"
) -> ServerSettings:
    """Server settings from the command's options; unset options keep the defaults."""
    overrides: dict[str, Any] = {"listen": listen, "owner": owner, "store": store}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.expanduser().resolve()
    return ServerSettings(**overrides)
