"""The file store's contract: what a store keeps about a file, and the calls it answers.

A file is id-addressed: the server makes a random id (`new_id`) when an upload starts, before
any byte (and so its hash) is known, which is what lets an upload be resumed by id; each
file has its own owner and expiry, so deleting or expiring one never touches another's bytes
(content addressing, with one copy shared by equal files, would need reference counts: a
later option behind this same interface).

Implementations: `falrt/files/local.py` (the local filesystem under the server's data
directory, the default) and `falrt/files/s3.py` (an S3-compatible service: `write` buffers
and uploads the parts of a multipart upload, `pause` saves an unfinished part, `finish`
completes it, `read` streams a ranged GET; docs/files.md).

Every call runs its blocking I/O off the event loop; `read` yields bounded chunks, so a
file's size never bounds the server's memory.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator
from typing import Protocol

import msgspec

from falrt import errors

# The bytes one read of a file yields, and the most a write buffers before it reaches disk.
CHUNK_BYTES = 1024 * 1024
# The most files one `list` answers.
LIST_LIMIT = 1000
_ID = re.compile(r"[0-9a-f]{32}")


class NewFile(msgspec.Struct, frozen=True):
    """What an upload announces, checked (`falrt/server/files.py`)."""

    name: str
    content_type: str
    size: int
    sha256: str  # "" when the uploader gave none
    owner: str
    expires_at: float  # seconds since the epoch


class FileRecord(msgspec.Struct, frozen=True):
    """A file as the store keeps it. `received` is the bytes the store has (`size` once
    `complete`); `sha256` is "" until complete (or the one the uploader announced)."""

    file_id: str
    name: str
    content_type: str
    size: int
    received: int
    complete: bool
    sha256: str
    owner: str
    created_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


class FileStore(Protocol):
    """Where files live. Loop-affine: every method is called on the server's event loop and
    does its blocking I/O in threads. The caller serializes the writes of one file (one
    upload stream at a time per id, `falrt/server/files.py`); reads, stats and deletes may
    run beside them.

    Errors: NotFoundError for an unknown id (or, where `now` is given, an expired file);
    FailedPreconditionError for a write at another offset than `received`; OutOfRangeError
    for a read past the end; StoreFullError when the disk is full."""

    async def open(self) -> None:
        """Prepares the store and repairs what a crash left half done. Idempotent."""
        ...

    async def close(self) -> None:
        """Lets go of what the store holds (no call is made after)."""
        ...

    async def create(self, new: NewFile, now: float) -> FileRecord:
        """Starts a file with no bytes yet and returns its record (incomplete: `finish`
        completes it, an empty file too)."""
        ...

    async def write(self, file_id: str, offset: int, data: bytes) -> int:
        """Appends `data` at `offset`, which must be the bytes the store has (or, within
        one upload stream, what the last write returned); returns the bytes it has now. A
        write interrupted by a crash leaves a prefix of what the writes sent: `stat` then
        says how far it got (the S3 store: up to its last whole part)."""
        ...

    async def pause(self, file_id: str) -> None:
        """An upload stream ended before the file's last byte (the caller went away or
        half-closed early): makes what it wrote count in `received`, so that a resume, by
        this server or another, goes on from there. Never raises for a missing file."""
        ...

    async def finish(self, file_id: str) -> FileRecord:
        """Completes a file whose bytes all arrived: checks their sha256 against the one
        announced (on a mismatch the file is deleted and InvalidArgumentError raised), makes
        them durable, and marks it complete. Idempotent for a complete file."""
        ...

    async def stat(self, file_id: str, now: float | None = None) -> FileRecord:
        """The file's record (with `received` as the disk has it)."""
        ...

    def read(self, file_id: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Streams bytes [start, end) of a complete file, in chunks of at most CHUNK_BYTES.
        The bytes stay readable to the end of the stream even if the file is deleted
        meanwhile. The caller checked the range against `stat`."""
        ...

    async def list(self, now: float, limit: int = LIST_LIMIT) -> list[FileRecord]:
        """Unexpired files, newest first, at most `limit`."""
        ...

    async def delete(self, file_id: str) -> bool:
        """Deletes the file, complete or not; False when there was none."""
        ...

    async def delete_expired(self, now: float) -> int:
        """Deletes every file expired at `now`; returns how many."""
        ...


def new_id() -> str:
    """A fresh file id: 32 random lowercase hex digits (128 bits)."""
    return secrets.token_hex(16)


def check_id(file_id: str) -> str:
    """`file_id` when it has the form of an id; else InvalidArgumentError. (The local store
    makes paths of ids: nothing else may reach it.)"""
    if not _ID.fullmatch(file_id):
        raise errors.InvalidArgumentError(
            f"a file id is 32 lowercase hex digits, not {errors.quote(file_id)}")
    return file_id


def not_found(file_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no file with id {errors.quote(file_id)} (or it expired)")
