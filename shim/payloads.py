"""Payloads by reference on the runner (docs/files.md, "Payloads by reference").

An Assign whose input has a `file_id` (the caller's input was over the size that travels
inline) is read from the Files service with the runner's key before it is decoded; an output
whose encoded bytes are over the server's `payload_ref_bytes` (FALRT_PAYLOAD_REF_BYTES) is
uploaded to the Files service and its Result carries the file's id, size and URL instead of
the bytes. So neither is bounded by the gRPC message limit. A runner on the server's host
(FALRT_FILES_LOCAL) reads and writes those files in the server's local store instead
(docs/files.md, "Runners on the server's host"), falling back to gRPC for good when that
fails. The bytes still pass through
memory once (the handler's input and output are values, not streams); the network and disk
work runs in the loop's default thread pool, never on the event loop.

A failure to read or store a payload fails that request with the Files service's error (its
type kept: NOT_FOUND for a file that expired, UNAVAILABLE while the server restarts), named
as the input's or the output's; the request's retry rules then apply as to any failure.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from falrt.errors import FalrtError

from .files_connection import FilesConnection

if TYPE_CHECKING:
    from falrt.client.files import FilesClient
    from falrt.v1 import files_pb2

__all__ = ["PayloadFiles"]

log = logging.getLogger(__name__)


class PayloadFiles:
    """Reads inputs and stores outputs by reference for one runner. Loop-affine coroutines;
    the runner's Files client is made on first use (an app whose payloads stay small never
    makes one)."""

    def __init__(self, expires_in_s: int = 0, connection: FilesConnection | None = None) -> None:
        """`expires_in_s`: how long an output's file is kept (0: the server's default)."""
        self._expires_in_s = expires_in_s
        self._connection = connection or FilesConnection()

    async def read(self, file_id: str) -> bytes:
        """The bytes of the input in file `file_id`."""
        try:
            return await asyncio.to_thread(self._read, file_id)
        except FalrtError as exc:
            raise type(exc)(f"the request's input (file {file_id}) could not be read: "
                            f"{exc.message}") from None

    async def store(self, data: bytes, content_type: str) -> files_pb2.FileInfo:
        """Uploads an encoded output; the complete file's info."""
        try:
            return await asyncio.to_thread(self._store, data, content_type)
        except FalrtError as exc:
            raise type(exc)(f"the output ({len(data)} bytes, over the size that travels "
                            f"inline) could not be stored: {exc.message}") from None

    # -- in a worker thread -----------------------------------------------------------

    def _read(self, file_id: str) -> bytes:
        """On the server's host, from its local store (the sha256 is the store's: the
        bytes cross no transport); else over gRPC, sha256-checked."""
        data = self._connection.try_local(lambda client: _read_local(client, file_id))
        return data if data is not None else self._connection.client().read_bytes(file_id)

    def _store(self, data: bytes, content_type: str) -> files_pb2.FileInfo:
        """On the server's host, written into the local store's staging file and adopted;
        else uploaded over gRPC."""
        local = self._connection.try_local(lambda client: client.upload_local(
            lambda staging: staging.write_bytes(data), len(data),
            content_type=content_type, name="output", expires_in_s=self._expires_in_s))
        return local or self._connection.client().upload_bytes(
            data, content_type=content_type, name="output", expires_in_s=self._expires_in_s)


def _read_local(client: FilesClient, file_id: str) -> bytes:
    data = Path(client.open_local(file_id).path).read_bytes()
    log.info("input file %s: read from the server's store on this host", file_id)
    return data
