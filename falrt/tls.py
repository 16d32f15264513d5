"""TLS on the server's side: the gRPC port's credentials, and what the server's runners get
to verify it (and, under mutual TLS, to prove themselves).

The files are `falrt server --tls-*` (`falrt.settings.TlsFiles`). The server's own key stays
in the server: a runner runs user code that can read its environment, so it gets the trust
roots, the name to expect, and the runner certificate the operator made for runners
(`--tls-runner-cert/--tls-runner-key`), never the server's key. They reach the runner as
PEM text in its environment (`RUNNER_*` variables below, read by `shim/settings.py`): the
same for a local process and a container, with no file to mount.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from falrt.settings import TlsFiles

ROOTS_VAR = "FALRT_TLS_ROOTS_PEM"  # what the runner verifies the server with
CERT_VAR = "FALRT_TLS_CERT_PEM"  # the runner's client certificate (mutual TLS)
KEY_VAR = "FALRT_TLS_KEY_PEM"  # its key
SERVER_NAME_VAR = "FALRT_TLS_SERVER_NAME"  # the name expected in the server's certificate


class TlsError(ValueError):
    """A TLS file is missing or unreadable, or the options do not fit together."""


def check(files: TlsFiles) -> None:
    """Raises TlsError when the options cannot work: mutual TLS without a runner certificate
    (the server's runners could not connect), or half a certificate pair."""
    if (files.runner_cert is None) != (files.runner_key is None):
        raise TlsError("--tls-runner-cert and --tls-runner-key go together")
    if files.client_ca is not None and files.runner_cert is None:
        raise TlsError("with --tls-client-ca every client must show a certificate, the "
                       "server's runners too: give them one with --tls-runner-cert FILE "
                       "--tls-runner-key FILE (not the server's own key: runner code can "
                       "read it)")


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """The gRPC port's credentials; a client certificate is required when `client_ca` is
    set. Blocking (reads files). Raises TlsError."""
    check(files)
    pair = (_read(files.key, "--tls-key"), _read(files.cert, "--tls-cert"))
    client_ca = _read(files.client_ca, "--tls-client-ca") if files.client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def runner_env(files: TlsFiles) -> dict[str, str]:
    """What a runner gets in its environment to dial the server over TLS. Blocking (reads
    files, at each runner start: a renewed runner certificate reaches the next runners).
    Raises TlsError."""
    roots = files.runner_ca or files.cert
    env = {ROOTS_VAR: _read(roots, "--tls-runner-ca").decode()}
    if files.runner_cert is not None and files.runner_key is not None:
        env[CERT_VAR] = _read(files.runner_cert, "--tls-runner-cert").decode()
        env[KEY_VAR] = _read(files.runner_key, "--tls-runner-key").decode()
    if files.server_name:
        env[SERVER_NAME_VAR] = files.server_name
    return env


def _read(path: Path, option: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {option} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{option} {path} is not a PEM file")
    return data
