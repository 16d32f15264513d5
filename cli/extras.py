"""The `falrt[server]` extra: the commands that run the server or build its images need it.

`pip install falrt` is the light client (the SDK, the clients and the client commands); the
server's dependencies come with `pip install 'falrt[server]'`. A server-only command loads
its modules inside `server_extra`, which turns a missing one into that instruction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import CliError

# The top-level modules the server extra installs (pyproject.toml's `server` list).
SERVER_MODULES = frozenset({
    "asyncpg", "cryptography", "docker", "grpc_health", "grpc_reflection", "httpx",
    "pynvml", "starlette", "uvicorn", "uvloop",
})
INSTALL_HINT = "pip install 'falrt[server]'"


class MissingServerExtra(CliError):
    """A server-only command ran where the `falrt[server]` extra is not installed."""


@contextlib.contextmanager
def server_extra(command: str) -> Iterator[None]:
    """Runs the block (the imports of a server-only command); a missing module of the server
    extra becomes a MissingServerExtra that says how to install it. Any other import
    failure propagates unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        raise MissingServerExtra(
            f"`falrt {command}` needs the server's dependencies ({exc.name} is not "
            f"installed): install falrt[server] with {INSTALL_HINT}") from None
