"""Payloads by reference in the Python client (docs/files.md, "Payloads by reference").

An encoded input over the client's `payload_ref_bytes` (1 MiB unless set) is uploaded to the
server's file store and the request carries the file's id instead of the bytes; an output
the server answers by reference (a Payload with `file_id`) is downloaded before it is
decoded. So callers see the same values whatever their size, and neither is bounded by the
gRPC message limit. Both are blocking calls of the Files client (the asyncio client runs them
in a thread).
"""

from __future__ import annotations

from falrt.client.files import FilesClient
from falrt.limits import by_reference
from falrt.v1 import common_pb2


def send_by_reference(files: FilesClient, payload: common_pb2.Payload, threshold: int) -> None:
    """Moves an input over `threshold` bytes into a file: `payload` then names it."""
    if not by_reference(len(payload.data), threshold):
        return
    info = files.upload_bytes(payload.data, content_type=payload.content_type, name="input")
    payload.ClearField("data")
    payload.file_id = info.file_id


def fetch_reference(files: FilesClient, payload: common_pb2.Payload) -> None:
    """Puts the bytes of an output answered by reference into `payload`."""
    if payload.file_id:
        payload.data = files.read_bytes(payload.file_id)
        payload.file_id = ""


__all__ = ["fetch_reference", "send_by_reference"]
