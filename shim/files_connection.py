"""A runner's connection to the Files service (shim/files.py, shim/payloads.py), and its
same-host transfers: a runner on the server's host (FALRT_FILES_LOCAL) moves files through
the server's local store's directory instead of gRPC (docs/files.md, "Runners on the
server's host"), until one such transfer fails.

The Files client (falrt/client/files.py) is imported on first use only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from falrt.errors import FailedPreconditionError

if TYPE_CHECKING:  # (imported when first used: only apps that move files need the client)
    from falrt.client.files import FilesClient

__all__ = ["FilesConnection"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class FilesConnection:
    """A runner's one Files client, made on first use (an app that never moves a file
    never makes one), from threads as well as the loop. Shared by the File fields here and
    the payloads by reference (shim/payloads.py)."""

    def __init__(
        self, connect: Callable[[], FilesClient] | None = None, local: bool = False,
    ) -> None:
        """`connect` makes the client (default: the server and key of the runner's
        environment, `falrt.client.connection`). `local`: the runner is on the server's
        host and may move bytes through the server's local store (FALRT_FILES_LOCAL:
        `falrt/server/fleet/launch.py` says when)."""
        self._connect = connect or _connect_from_environment
        self._lock = threading.Lock()
        self._client: FilesClient | None = None
        self.local = local

    def try_local(self, work: Callable[[FilesClient], T]) -> T | None:
        """`work(client)`, a transfer through the server's local store, when this runner
        makes those; None when it does not, or when the transfer failed with an OSError
        (a path it cannot see) or FailedPreconditionError (a store that is not local, a
        refused staging file): that is logged once and the runner moves files over gRPC
        from then on. Other errors of the Files service (NOT_FOUND, a key refused) are
        the same over gRPC: they are raised."""
        if not self.local:
            return None
        try:
            return work(self.client())
        except (OSError, FailedPreconditionError) as exc:
            self.local = False
            log.warning("files move over gRPC from now on: a transfer through the server's "
                        "local store failed (%s)", exc)
            return None

    def client(self) -> FilesClient:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client


def _connect_from_environment() -> FilesClient:
    """The Files client of the runner's server and key (FALRT_HOST, FALRT_KEY)."""
    from falrt.client import connection
    from falrt.client.files import FilesClient

    return FilesClient(connection.channel(connection.resolve_target()))
