"""`falrt server --tls-*`: the options that put the gRPC port (and the runners' link) on
TLS, gathered into one `TlsFiles` (docs/security.md, "TLS")."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from falrt.settings import TlsFiles

R = TypeVar("R")
_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)
# (option, parameter, environment variable, help)
_OPTIONS = (
    ("--tls-cert", "cert", "FALRT_TLS_CERT",
     "serve gRPC over TLS with this PEM certificate chain (`falrt certs dev` makes one)"),
    ("--tls-key", "key", "FALRT_TLS_KEY", "the PEM private key of --tls-cert"),
    ("--tls-client-ca", "client_ca", "FALRT_TLS_CLIENT_CA",
     "mutual TLS: refuse clients without a certificate this CA signed (needs "
     "--tls-runner-cert/--tls-runner-key for the server's runners)"),
    ("--tls-runner-ca", "runner_ca", "FALRT_TLS_RUNNER_CA",
     "the CA runners verify the server with (default: the certificates of --tls-cert, "
     "which must then include its root)"),
    ("--tls-runner-cert", "runner_cert", "FALRT_TLS_RUNNER_CERT",
     "the client certificate runners show under mutual TLS (runner code can read it; "
     "never the server's own)"),
    ("--tls-runner-key", "runner_key", "FALRT_TLS_RUNNER_KEY", "the key of --tls-runner-cert"),
)


def tls_options(command: Callable[..., R]) -> Callable[..., R]:
    """Adds the --tls-* options to `command`, which receives them as `tls` (None: no TLS)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        files = {name: kwargs.pop(f"tls_{name}") for _, name, _, _ in _OPTIONS}
        server_name = kwargs.pop("tls_server_name")
        return command(*args, tls=_tls_files(files, server_name), **kwargs)

    decorated: Callable[..., R] = click.option(
        "--tls-server-name", "tls_server_name", envvar="FALRT_TLS_SERVER_NAME", default="",
        help="the name runners expect in the server's certificate, when it does not name "
             "the address they dial (env FALRT_TLS_SERVER_NAME)")(wrapper)
    for flag, name, env, text in reversed(_OPTIONS):
        decorated = click.option(flag, f"tls_{name}", envvar=env, type=_FILE, default=None,
                                 help=f"{text} (env {env})")(decorated)
    return decorated


def _tls_files(files: dict[str, Path | None], server_name: str) -> TlsFiles | None:
    cert, key = files.pop("cert"), files.pop("key")
    if cert is None and key is None:
        if any(files.values()) or server_name:
            raise click.UsageError("the other --tls-* options need --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together")
    return TlsFiles(cert=cert, key=key, server_name=server_name, **files)
