"""Inputs by reference at the gRPC edge (docs/files.md, "Payloads by reference").

A caller whose encoded input is over the message limit (the Python client: over
`payload_ref_bytes`) uploads it to the file store first and sends a Payload with `file_id`
instead of `data`. Before the request is stored, the file is checked here: it exists, has
not expired, is complete, and belongs to the caller's owner; the request then keeps the
file's reference (falrt/files/refs.py), which the runner receives in its Assign and reads
from the Files service with its own key.
"""

from __future__ import annotations

from typing import Any

from falrt import errors
from falrt.files import refs
from falrt.server.api.auth import Authenticator
from falrt.server.files import FilePlane
from falrt.v1 import common_pb2


class PayloadRefs:
    """Checks the files callers' inputs refer to."""

    def __init__(self, files: FilePlane, authenticator: Authenticator) -> None:
        self._files = files
        self._authenticator = authenticator

    async def checked(self, file_id: str, metadata: Any) -> bytes:
        """The PayloadRef (packed) of an input in file `file_id`. Raises UnauthenticatedError
        or PermissionDeniedError (not the caller's file), NotFoundError (no such file, or
        expired), FailedPreconditionError (its upload is unfinished)."""
        owner = self._authenticator.check_files(await self._authenticator.caller(metadata))
        record = await self._files.stat(file_id)
        if record.owner != owner:
            raise errors.PermissionDeniedError(
                f"file {file_id} belongs to {record.owner!r}, not to {owner!r}")
        if not record.complete:
            raise errors.FailedPreconditionError(
                f"file {file_id} has {record.received} of its {record.size} bytes: finish "
                "its upload before a request refers to it")
        return refs.pack(refs.PayloadRef(record.file_id, record.size, self._files.url(record)))


async def checked_input(
    payloads: PayloadRefs | None, payload: common_pb2.Payload, metadata: Any,
) -> bytes:
    """The checked reference of a caller's input Payload that names a file (`metadata`:
    the call's, naming the caller's key)."""
    if payload.data:
        raise errors.InvalidArgumentError("an input carries data or a file_id, not both")
    if payloads is None:
        raise errors.FailedPreconditionError(
            "this server keeps no files: send the input inline")
    return await payloads.checked(payload.file_id, metadata)
