"""The default file store: files on the local filesystem, under `<data_dir>/files/`.

Each file is two entries named by its id (ids are checked before they become paths):
`<id>.json`, its record (written to a temporary name, fsynced, then renamed over the old
one, so a reader sees the old record or the new one, never half of one), and its bytes:
`<id>.part` while the upload goes on, `<id>.data` once complete. The bytes a partial file
has are its `.part` file's size, so a resumed upload continues from what the disk holds,
whatever the server remembered. Completion: the bytes are fsynced, the record is marked
complete, then `.part` is renamed `.data`; a crash between the last two is repaired by
`open` (a complete record with a `.part` gets its rename). Without a record, bytes are
invisible and `open` removes them.

A complete file's bytes are read-only (mode 0444): a runner on the server's host may hold a
hard link to them (`data_path`); `adopt` completes a file whose `.part` (`staging_path`)
such a runner wrote (docs/files.md, "Runners on the server's host").

Every blocking call runs in a thread (`asyncio.to_thread`); a write moves what the caller
gathered (falrt/server/files.py: about CHUNK_BYTES), a download reads READ_AHEAD_BYTES per
hop, the next block while the last is sent. `list` and the expiry sweep read every record: fine
for thousands of files; an index (SQLite) is the step after that.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgspec

from falrt import errors
from falrt.durable import fsync_dir
from falrt.files.base import (
    CHUNK_BYTES,
    LIST_LIMIT,
    FileRecord,
    NewFile,
    check_id,
    new_id,
    not_found,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_DECODE = msgspec.json.Decoder(FileRecord)
# The bytes one worker-thread hop of a download reads (as CHUNK_BYTES chunks).
READ_AHEAD_BYTES = 4 * CHUNK_BYTES


class LocalFileStore:
    """`FileStore` on a local directory (see the module docstring). Loop-affine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Per file being written: (offset, the sha256 of its bytes up to there), so that a
        # file is hashed as it arrives; after a restart, a resumed file's prefix is hashed
        # again from disk once.
        self._hashes: dict[str, tuple[int, Any]] = {}

    async def open(self) -> None:
        await _io(self._repair)

    async def close(self) -> None:
        self._hashes.clear()

    async def create(self, new: NewFile, now: float) -> FileRecord:
        record = FileRecord(
            file_id=new_id(), name=new.name, content_type=new.content_type, size=new.size,
            received=0, complete=False, sha256=new.sha256, owner=new.owner, created_at=now,
            expires_at=new.expires_at)
        await _io(self._create, record)
        self._hashes[record.file_id] = (0, hashlib.sha256())
        return record

    async def write(self, file_id: str, offset: int, data: bytes) -> int:
        check_id(file_id)
        return await _io(self._write, file_id, offset, data)

    async def pause(self, file_id: str) -> None:
        """Nothing to do: every write reached the `.part` file already."""

    async def finish(self, file_id: str) -> FileRecord:
        check_id(file_id)
        try:
            return await _io(self._finish, file_id)
        finally:
            self._hashes.pop(file_id, None)

    # -- same-host transfers (docs/files.md, "Runners on the server's host") -----------

    def data_path(self, file_id: str) -> Path:
        """Where a complete file's bytes are (read-only for everyone but this store)."""
        return self._path(check_id(file_id), ".data")

    def staging_path(self, file_id: str) -> Path:
        """Where an incomplete file's bytes are: the file `adopt` completes."""
        return self._path(check_id(file_id), ".part")

    async def adopt(self, file_id: str) -> FileRecord:
        """Completes a file whose staging file another process filled: it must be a plain
        file with one link (not a symbolic or hard link to something else) of the announced
        size. Hashes it (in a thread), then completes it as `finish` does. Raises
        FailedPreconditionError when the staging file is not that, and what `finish`
        raises."""
        check_id(file_id)
        try:
            # (the disk writes the bytes while they are hashed: `_finish`'s fsync is then
            # quick)
            inode, _ = await asyncio.gather(_io(self._hash_staged, file_id),
                                            _io(self._sync_staged, file_id))
            done = await _io(self._finish, file_id)
            await _io(self._check_inode, file_id, inode)
            return done
        finally:
            self._hashes.pop(file_id, None)

    def _hash_staged(self, file_id: str) -> int:
        """Hashes the staging file through one descriptor opened without following links
        and keeps the hash for `_finish`; returns its inode number."""
        record = self._stat(file_id)
        if record is None:
            raise not_found(file_id)
        try:
            fd = os.open(self._path(file_id, ".part"), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise not_found(file_id) from None
            raise _not_staged(file_id, f"it cannot be opened ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise _not_staged(file_id, "it is not a plain file with one link")
            if info.st_size != record.size:
                raise _not_staged(file_id, f"it has {info.st_size} bytes, not the "
                                  f"{record.size} announced")
            hasher = hashlib.sha256()
            while chunk := file.read(READ_AHEAD_BYTES):
                hasher.update(chunk)
        self._hashes[file_id] = (record.size, hasher)
        return info.st_ino

    def _sync_staged(self, file_id: str) -> None:
        """Starts the staging file's bytes to disk (its checks are `_hash_staged`'s)."""
        with contextlib.suppress(OSError):
            fd = os.open(self._path(file_id, ".part"), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _check_inode(self, file_id: str, inode: int) -> None:
        """The completed bytes are the file that was hashed (not one swapped in since)."""
        if self._path(file_id, ".data").lstat().st_ino != inode:
            self._delete(file_id)
            raise _not_staged(file_id, "it was replaced while it was completed")

    async def stat(self, file_id: str, now: float | None = None) -> FileRecord:
        check_id(file_id)
        record = await _io(self._stat, file_id)
        if record is None or (now is not None and record.expired(now)):
            raise not_found(file_id)
        return record

    async def read(self, file_id: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Reads READ_AHEAD_BYTES per worker-thread hop, the next block while the caller
        sends the last one (so at most two blocks are held)."""
        check_id(file_id)
        try:
            fd = await _io(os.open, self._path(file_id, ".data"), os.O_RDONLY)
        except FileNotFoundError:
            raise not_found(file_id) from None
        ahead: asyncio.Future[list[bytes]] | None = \
            _read_ahead(fd, start, end) if start < end else None
        try:
            position = start
            while ahead is not None:
                chunks = await ahead
                position += sum(map(len, chunks))
                if not chunks or position > end:
                    raise errors.InternalError(f"file {file_id} is shorter than its record")
                ahead = _read_ahead(fd, position, end) if position < end else None
                for chunk in chunks:
                    yield chunk
        finally:
            await asyncio.shield(_close_after(ahead, fd))

    async def list(self, now: float, limit: int = LIST_LIMIT) -> list[FileRecord]:
        records = await _io(self._records)
        live = sorted((r for r in records if not r.expired(now)),
                      key=lambda r: r.created_at, reverse=True)
        return live[:limit]

    async def delete(self, file_id: str) -> bool:
        check_id(file_id)
        self._hashes.pop(file_id, None)
        return await _io(self._delete, file_id)

    async def delete_expired(self, now: float) -> int:
        expired = [r.file_id for r in await _io(self._records) if r.expired(now)]
        for file_id in expired:
            await self.delete(file_id)
        return len(expired)

    # -- blocking parts, run in threads -------------------------------------------------

    def _path(self, file_id: str, suffix: str) -> Path:
        return self.root / (file_id + suffix)

    def _create(self, record: FileRecord) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._path(record.file_id, ".part").touch(exist_ok=False)
        self._save(record)

    def _write(self, file_id: str, offset: int, data: bytes) -> int:
        try:
            file = self._path(file_id, ".part").open("r+b")  # (closed by the `with` below)
        except FileNotFoundError:
            raise not_found(file_id) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            if offset != size:
                raise errors.FailedPreconditionError(
                    f"file {file_id} has {size} bytes: the upload must go on from offset "
                    f"{size}, not {offset}")
            hasher = self._hasher(file_id, file, size)
            file.seek(offset)
            file.write(data)
        hasher.update(data)
        self._hashes[file_id] = (offset + len(data), hasher)
        return offset + len(data)

    def _hasher(self, file_id: str, file: BinaryIO, size: int) -> Any:
        """The sha256 of the file's first `size` bytes: kept from the last write, else read
        again from disk (a resumed upload after a restart)."""
        kept = self._hashes.get(file_id)
        if kept is not None and kept[0] == size:
            return kept[1]
        hasher = hashlib.sha256()
        file.seek(0)
        left = size
        while left > 0 and (chunk := file.read(min(CHUNK_BYTES, left))):
            hasher.update(chunk)
            left -= len(chunk)
        return hasher

    def _finish(self, file_id: str) -> FileRecord:
        record = self._stat(file_id)
        if record is None:
            raise not_found(file_id)
        if record.complete:
            return record
        if record.received != record.size:
            raise errors.FailedPreconditionError(
                f"file {file_id} has {record.received} of its {record.size} bytes")
        part = self._path(file_id, ".part")
        with open(part, "rb") as file:
            digest = self._hasher(file_id, file, record.size).hexdigest()
            os.fsync(file.fileno())
            # Read-only: a same-host runner may hold a hard link to the bytes.
            os.fchmod(file.fileno(), 0o444)
        if record.sha256 and digest != record.sha256:
            self._delete(file_id)
            raise errors.InvalidArgumentError(
                f"the bytes' sha256 is {digest}, not the {record.sha256} announced: the file "
                "was deleted; upload it again")
        done = msgspec.structs.replace(record, complete=True, sha256=digest)
        self._save(done)
        os.replace(part, self._path(file_id, ".data"))
        fsync_dir(self.root)
        return done

    def _stat(self, file_id: str) -> FileRecord | None:
        record = self._load(self._path(file_id, ".json"))
        if record is None or record.complete:
            return record
        try:
            received = self._path(file_id, ".part").stat().st_size
        except FileNotFoundError:
            return None
        return msgspec.structs.replace(record, received=received)

    def _load(self, path: Path) -> FileRecord | None:
        try:
            return _DECODE.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            log.error("the file record %s does not parse; the file is ignored", path)
            return None

    def _save(self, record: FileRecord) -> None:
        path = self._path(record.file_id, ".json")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as file:
            file.write(msgspec.json.encode(record))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)

    def _delete(self, file_id: str) -> bool:
        record = self._path(file_id, ".json")
        existed = record.exists()
        record.unlink(missing_ok=True)  # (first: without it, the bytes are invisible)
        for suffix in (".part", ".data"):
            self._path(file_id, suffix).unlink(missing_ok=True)
        return existed

    def _records(self) -> builtins.list[FileRecord]:
        if not self.root.exists():
            return []
        found = (self._stat(path.stem) for path in self.root.glob("*.json"))
        return [record for record in found if record is not None]

    def _repair(self) -> None:
        """What a crash left: temporary records, bytes without a record, a complete record
        whose `.part` was not renamed yet."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.iterdir():
            file_id, _, suffix = path.name.partition(".")
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif suffix in ("part", "data") and not self._path(file_id, ".json").exists():
                log.info("removing %s: no record (a crash during its upload)", path.name)
                path.unlink(missing_ok=True)
            elif suffix == "part":
                record = self._load(self._path(file_id, ".json"))
                if record is not None and record.complete:
                    os.replace(path, self._path(file_id, ".data"))


async def _io(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread; a full disk is StoreFullError."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.StoreFullError(f"the file store's disk is full: {exc}") from None
        raise


def _not_staged(file_id: str, why: str) -> errors.FailedPreconditionError:
    return errors.FailedPreconditionError(f"the staging file of {file_id} is not adopted: {why}")


def _read_ahead(fd: int, start: int, end: int) -> asyncio.Future[list[bytes]]:
    """Bytes [start, end) of `fd`, at most READ_AHEAD_BYTES of them, as chunks of at most
    CHUNK_BYTES, read in a worker thread (started now)."""
    return asyncio.ensure_future(_io(_pread_chunks, fd, start, min(end, start + READ_AHEAD_BYTES)))


def _pread_chunks(fd: int, start: int, end: int) -> builtins.list[bytes]:
    chunks = []
    while start < end and (chunk := os.pread(fd, min(CHUNK_BYTES, end - start), start)):
        chunks.append(chunk)
        start += len(chunk)
    return chunks


async def _close_after(ahead: asyncio.Future[builtins.list[bytes]] | None, fd: int) -> None:
    """Closes `fd` once the read in flight on it (if any) ended."""
    if ahead is not None:
        await asyncio.wait([ahead])
        if not ahead.cancelled():
            ahead.exception()  # (retrieved: the reader went away, nobody wants it)
    os.close(fd)
