"""Where the client connects and how: the one place that reads `FALRT_HOST`."""

from __future__ import annotations

import os

DEFAULT_HOST = "127.0.0.1:50051"
HOST_ENV = "FALRT_HOST"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def resolve_host(host: str | None) -> str:
    """`host` if given, else `$FALRT_HOST`, else `127.0.0.1:50051`."""
    return host or os.environ.get(HOST_ENV) or DEFAULT_HOST
