"""Where the client connects and how: the one place that reads `FALRT_HOST` and the
`FALRT_TLS_*` variables, and that builds the channels which carry the caller's API key.

A target is `host:port` (plaintext) or `https://host:port` (TLS). A CA file (`tls_ca`,
else `$FALRT_TLS_CA`) also means TLS, verified against that CA instead of gRPC's default
roots; a client certificate and key (`tls_client_cert`/`tls_client_key`, else
`$FALRT_TLS_CLIENT_CERT`/`$FALRT_TLS_CLIENT_KEY`) are shown to a server that asks for one
(mutual TLS); `$FALRT_TLS_SERVER_NAME` names the host the server's certificate must carry
when it is not the one dialled (a runner's environment sets it, see docs/runners.md).

The API key (`falrt.client.credentials`: given, `$FALRT_KEY`, or recorded for this server)
travels as gRPC call credentials, which gRPC attaches only to a secure channel: TLS, or a
plaintext connection to a loopback address (local channel credentials). A key is never sent
in clear to another machine: a client with a key for a plaintext target that is not local
refuses to start (`InsecureConnectionError`) rather than send it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import grpc

from falrt.client.credentials import KEY_ENV, METADATA_KEY, is_local, key_for, strip_scheme
from falrt.errors import InsecureConnectionError

DEFAULT_HOST = "127.0.0.1:50051"
HOST_ENV = "FALRT_HOST"
TLS_CA_ENV = "FALRT_TLS_CA"
TLS_CERT_ENV = "FALRT_TLS_CLIENT_CERT"
TLS_KEY_ENV = "FALRT_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV = "FALRT_TLS_SERVER_NAME"  # the name expected in the server's certificate
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


class ConnectOptions(TypedDict, total=False):
    """How a client reaches its server, beyond the address (every one optional)."""

    tls_ca: str | Path | None  # PEM file of the CA the server's certificate chains to
    tls_client_cert: str | Path | None  # PEM client certificate, for mutual TLS
    tls_client_key: str | Path | None  # its private key
    key: str | None  # the API key, "KEY_ID:SECRET"; default $FALRT_KEY, else the recorded


@dataclass(frozen=True)
class Target:
    """A server and how to reach it: what a channel is built from."""

    address: str  # what gRPC dials: host:port (no scheme)
    tls: bool
    ca: bytes | None = field(default=None, repr=False)  # None: gRPC's default roots
    cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    server_name: str = ""  # the name the certificate must carry ("": the host dialled)


def resolve_host(host: str | None) -> str:
    """`host` if given, else `$FALRT_HOST`, else `127.0.0.1:50051` (any scheme kept)."""
    return host or os.environ.get(HOST_ENV) or DEFAULT_HOST


def resolve_target(host: str | None = None, **options: Unpack[ConnectOptions]) -> Target:
    """The target `host` (see `resolve_host`) names, with `options` (`ConnectOptions`) or
    their `FALRT_TLS_*` variables. Raises InsecureConnectionError when a key is known but
    would travel in clear to another machine; OSError when a TLS file cannot be read."""
    given = resolve_host(host)
    ca_file = options.get("tls_ca") or os.environ.get(TLS_CA_ENV) or None
    cert_file = options.get("tls_client_cert") or os.environ.get(TLS_CERT_ENV) or None
    key_file = options.get("tls_client_key") or os.environ.get(TLS_KEY_ENV) or None
    address = strip_scheme(given)
    tls = given.lower().startswith(("https://", "grpcs://")) or bool(ca_file or cert_file)
    api_key = key_for(address, options.get("key"))
    if api_key and not tls and not is_local(address):
        raise InsecureConnectionError(
            f"refusing to send an API key to {address} over plaintext: gRPC sends keys in "
            f"clear only to this machine. Use https://{address} (with --tls-ca FILE or "
            f"${TLS_CA_ENV} for a private CA) if the server has TLS; else reach it through "
            f"an SSH tunnel to a local port, or unset ${KEY_ENV}")
    return Target(address, tls, _read(ca_file), _read(cert_file), _read(key_file), api_key,
                  os.environ.get(TLS_SERVER_NAME_ENV, "") if tls else "")


def _options(target: Target) -> tuple[tuple[str, int | str], ...]:
    if not target.server_name:
        return CHANNEL_OPTIONS
    return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", target.server_name))


def channel(target: Target | str) -> grpc.Channel:
    """A blocking channel to `target` whose calls carry its key (if any)."""
    target = resolve_target(target) if isinstance(target, str) else target
    creds = _credentials(target)
    if creds is None:
        return grpc.insecure_channel(target.address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target.address, creds, options=_options(target))


def aio_channel(target: Target | str) -> grpc.aio.Channel:
    """An asyncio channel to `target` whose calls carry its key (if any)."""
    target = resolve_target(target) if isinstance(target, str) else target
    creds = _credentials(target)
    if creds is None:
        return grpc.aio.insecure_channel(target.address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target.address, creds, options=_options(target))


def _credentials(target: Target) -> grpc.ChannelCredentials | None:
    """TLS, else local (plaintext, but gRPC then sends call credentials), else None."""
    if target.tls:
        transport = grpc.ssl_channel_credentials(target.ca, target.client_key, target.cert)
    elif target.api_key:  # resolve_target checked that the address is local
        kind = (grpc.LocalConnectionType.UDS if target.address.startswith("unix:")
                else grpc.LocalConnectionType.LOCAL_TCP)
        transport = grpc.local_channel_credentials(kind)
    else:
        return None
    if not target.api_key:
        return transport
    return grpc.composite_channel_credentials(
        transport, grpc.metadata_call_credentials(_ApiKey(target.api_key), name="falrt-key"))


class _ApiKey(grpc.AuthMetadataPlugin):
    """Adds `authorization: Key KEY` to each call (gRPC runs it for secure channels only)."""

    def __init__(self, key: str) -> None:
        self._metadata = ((METADATA_KEY, f"Key {key}"),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).expanduser().read_bytes() if path else None
