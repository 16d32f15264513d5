"""Payloads by reference as the server keeps them (docs/files.md, "Payloads by reference").

Everywhere in the server and its stores a request's input and a result's output are a pair
(bytes, content type). A payload that travels by file reference is kept as the same pair: its
bytes are a small record of the file (`PayloadRef`: id, size, signed URL) and its content type
is the payload's own with REF_SUFFIX appended. So neither store changes (SQLite and PostgreSQL
keep the pair as they did), and an inline payload costs one `endswith` where it leaves the
server. The suffix never comes from a caller: `content_type_of`
(falrt/server/queue/outcomes.py) takes only the plain types, and only the edge that checked
the file (or read the runner's Result) adds it.
"""

from __future__ import annotations

import msgspec

REF_SUFFIX = ";falrt-ref=file"


class PayloadRef(msgspec.Struct, frozen=True, array_like=True):
    """A payload's bytes, held in a complete file of the server's file store."""

    file_id: str
    size: int
    url: str = ""  # signed, keyless ("" when the server serves no HTTP edge)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(PayloadRef)


def is_ref(content_type: str) -> bool:
    return content_type.endswith(REF_SUFFIX)


def marked(content_type: str) -> str:
    """The content type a by-reference payload of `content_type` is kept with."""
    return content_type + REF_SUFFIX


def plain(content_type: str) -> str:
    """The payload's own content type (without REF_SUFFIX)."""
    return content_type.removesuffix(REF_SUFFIX)


def pack(ref: PayloadRef) -> bytes:
    return _ENCODER.encode(ref)


def unpack(data: bytes) -> PayloadRef:
    return _DECODER.decode(data)


__all__ = ["REF_SUFFIX", "PayloadRef", "is_ref", "marked", "pack", "plain", "unpack"]
