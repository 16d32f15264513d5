"""The server's file plane: the rules of uploads and downloads, shared by the gRPC edge
(`falrt/server/api/files_service.py`) and the HTTP edge (`falrt/server/http/files_api.py`),
over one `FileStore` (falrt/files/), and the background sweep of expired files.

Rules (docs/files.md; who may call is `Authenticator.check_files`'s): a file announces its
size up front, which is checked against `max_file_bytes` before a byte is taken; its expiry
is the server's default or the upload's own (at most `MAX_EXPIRY_S`); one upload stream
writes a file at a time (a resumed upload waits for the one it replaces to end); bytes past
the announced size fail the upload; a file is complete once all its bytes arrived, and only
then downloadable and given a signed URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import PurePosixPath

from falrt import errors
from falrt.files import create_file_store
from falrt.files.base import (
    CHUNK_BYTES,
    LIST_LIMIT,
    FileRecord,
    FileStore,
    NewFile,
    check_id,
    not_found,
)
from falrt.files.local import LocalFileStore
from falrt.files.signing import KEY_FILE, UrlSigner
from falrt.server.tasks import Tasks
from falrt.settings import ServerSettings

log = logging.getLogger(__name__)
SWEEP_S = 60.0
MAX_EXPIRY_S = 10 * 365 * 24 * 3600
NAME_CHARS = 255
DEFAULT_TYPE = "application/octet-stream"
FILES_PATH = "/files"


class FilePlane:
    """The rules above over a store. Loop-affine. `http_base` is the URL of the HTTP edge
    that signed URLs point at ("" when none is served): `--public-url`, else set once by the
    server when its HTTP listener is bound (before it serves)."""

    def __init__(
        self, store: FileStore, signer: UrlSigner, settings: ServerSettings,
        tasks: Tasks, clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signer = signer
        self.http_base = settings.public_url.rstrip("/")
        self._owner = settings.owner
        self._max_bytes = settings.max_file_bytes
        self._expiry_s = settings.file_expiry_s
        self._tasks = tasks
        self._clock = clock
        # Per file being uploaded: its lock (one upload stream writes at a time) and how many
        # streams hold or wait for it.
        self._writing: dict[str, tuple[asyncio.Lock, int]] = {}

    def serve_urls_at(self, http_addresses: list[tuple[str, str]], *, tls: bool) -> None:
        """Without --public-url, signed URLs point at --http-listen's bound address (the
        `http` one of the server's (name, HOST:PORT) listeners); called once, before the
        server serves."""
        for name, address in http_addresses:
            if name == "http" and not self.http_base:
                host, _, port = address.rpartition(":")
                host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
                self.http_base = f"{'https' if tls else 'http'}://{host}:{port}"

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()

    def start(self) -> None:
        """Starts the sweep of expired files (every SWEEP_S seconds)."""
        self._tasks.spawn(self._sweep(), name="falrt-files-sweep", essential=True)

    async def close(self) -> None:
        await self._tasks.close()
        await self.store.close()

    async def _sweep(self) -> None:
        while True:
            try:
                if deleted := await self.store.delete_expired(self._clock()):
                    log.info("deleted %d expired files", deleted)
            except Exception:  # (a full disk, a permission: the next sweep retries)
                log.exception("the sweep of expired files failed")
            await asyncio.sleep(SWEEP_S)

    # -- uploads ----------------------------------------------------------------------

    def new_file(
        self, owner: str, name: str, content_type: str, size: int, sha256: str = "",
        expires_in_s: float = 0,
    ) -> NewFile:
        """An upload's announcement, checked. Raises InvalidArgumentError, and
        PayloadTooLargeError for a size over the limit."""
        if size < 0:
            raise errors.InvalidArgumentError(f"a file's size is >= 0, not {size}")
        if size > self._max_bytes:
            raise errors.PayloadTooLargeError(
                f"the file has {size} bytes; this server takes files of at most "
                f"{self._max_bytes} bytes (--max-file-bytes)")
        if not 0 <= expires_in_s <= MAX_EXPIRY_S:
            raise errors.InvalidArgumentError(
                f"a file's expiry is 0 (the server's default) to {MAX_EXPIRY_S} seconds, "
                f"not {expires_in_s}")
        return NewFile(
            name=_check_name(name), content_type=_check_type(content_type), size=size,
            sha256=_check_sha256(sha256), owner=owner,
            expires_at=self._clock() + (expires_in_s or self._expiry_s))

    async def create(self, new: NewFile) -> FileRecord:
        return await self.store.create(new, self._clock())

    async def upload(
        self, file_id: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> FileRecord:
        """Writes `chunks` into the file from `offset` (the bytes it has), buffering at most
        CHUNK_BYTES plus one chunk; completes the file when all its bytes arrived. Waits for
        another upload of the same file to end first. Returns the file's record. On
        cancellation (the caller went away) the bytes written so far stay: resume them."""
        if offset < 0:
            raise errors.InvalidArgumentError(f"an offset is >= 0, not {offset}")
        async with self._writer(file_id):
            return await self._upload(file_id, offset, chunks)

    @contextlib.asynccontextmanager
    async def _writer(self, file_id: str) -> AsyncIterator[None]:
        """Holds the file's upload lock (waiting for the stream that has it)."""
        lock, users = self._writing.get(check_id(file_id), (asyncio.Lock(), 0))
        self._writing[file_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._writing[file_id]
            if users == 1:
                del self._writing[file_id]
            else:
                self._writing[file_id] = (lock, users - 1)

    async def _upload(
        self, file_id: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> FileRecord:
        record = await self.stat(file_id)
        if record.complete:
            raise errors.FailedPreconditionError(f"file {file_id} is complete already")
        if offset != record.received:
            raise errors.FailedPreconditionError(
                f"file {file_id} has {record.received} bytes: the upload must go on from "
                f"offset {record.received}, not {offset}")
        finished = False
        try:
            offset = await self._write(file_id, offset, record.size, chunks)
            if offset == record.size:
                finished = True
                return await self.store.finish(file_id)
        finally:
            if not finished:  # (a broken stream too: what arrived counts for a resume)
                await asyncio.shield(self.store.pause(file_id))
        return await self.stat(file_id)

    async def _write(
        self, file_id: str, offset: int, size: int, chunks: AsyncIterator[bytes]
    ) -> int:
        """Writes `chunks` from `offset` in writes of at least CHUNK_BYTES (but the last);
        returns the offset reached."""
        buffer = bytearray()
        async for chunk in chunks:
            if offset + len(buffer) + len(chunk) > size:
                raise errors.InvalidArgumentError(
                    f"more bytes than the {size} the upload announced")
            if not buffer and len(chunk) >= CHUNK_BYTES:  # (a whole chunk: no copy)
                offset = await self.store.write(file_id, offset, chunk)
                continue
            buffer += chunk
            if len(buffer) >= CHUNK_BYTES:
                offset = await self.store.write(file_id, offset, bytes(buffer))
                buffer.clear()
        if buffer:
            offset = await self.store.write(file_id, offset, bytes(buffer))
        return offset

    # -- same-host transfers ------------------------------------------------------------

    def _local(self) -> LocalFileStore:
        if not isinstance(self.store, LocalFileStore):
            raise errors.FailedPreconditionError(
                "this server's file store is not on its host: move bytes with Upload and "
                "Download")
        return self.store

    async def open_local(self, file_id: str) -> tuple[FileRecord, str]:
        """A complete file and the path of its bytes (docs/files.md, "Runners on the
        server's host")."""
        store = self._local()
        record = await self.complete(file_id)
        log.info("file %s is read in place by a caller on this host", file_id)
        return record, str(store.data_path(file_id))

    async def start_local(self, new: NewFile) -> tuple[FileRecord, str]:
        """A new file and the path of the staging file its bytes are written into."""
        store = self._local()
        record = await self.create(new)
        return record, str(store.staging_path(record.file_id))

    async def finish_local(self, file_id: str) -> FileRecord:
        """Completes a file started with `start_local` from its staging file (under the
        file's upload lock, as an Upload stream would)."""
        store = self._local()
        async with self._writer(file_id):
            record = await store.adopt(file_id)
        log.info("file %s is adopted from its staging file (%d bytes)", file_id, record.size)
        return record

    # -- reads ------------------------------------------------------------------------

    async def stat(self, file_id: str) -> FileRecord:
        """The unexpired file's record; NotFoundError otherwise."""
        return await self.store.stat(check_id(file_id), self._clock())

    async def complete(self, file_id: str) -> FileRecord:
        """The record of a complete, unexpired file (what may be downloaded)."""
        record = await self.stat(file_id)
        if not record.complete:
            raise not_found(file_id)
        return record

    def read(self, record: FileRecord, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of a complete file; OutOfRangeError outside it."""
        if start < 0:
            raise errors.InvalidArgumentError(f"an offset is >= 0, not {start}")
        if start > record.size or end > record.size or start > end:
            raise errors.OutOfRangeError(
                f"bytes {start}-{end} are outside file {record.file_id} ({record.size} bytes)")
        return self.store.read(record.file_id, start, end)

    async def list(self, limit: int = 0) -> list[FileRecord]:
        if limit < 0:
            raise errors.InvalidArgumentError(f"a limit is >= 0, not {limit}")
        return await self.store.list(self._clock(), min(limit or LIST_LIMIT, LIST_LIMIT))

    async def delete(self, file_id: str) -> None:
        if not await self.store.delete(check_id(file_id)):
            raise not_found(file_id)

    # -- URLs -------------------------------------------------------------------------

    def url(self, record: FileRecord, base: str = "") -> str:
        """The signed download URL of a complete file, valid until it expires, under `base`
        (default: `http_base`); "" when the file is incomplete or no base is known."""
        base = base or self.http_base
        if not record.complete or not base:
            return ""
        query = self.signer.query(record.file_id, int(record.expires_at))
        return f"{base}{FILES_PATH}/{record.file_id}?{query}"

    def check_signature(self, file_id: str, expires: str, signature: str) -> None:
        """Passes a valid, unexpired signed URL; PermissionDeniedError otherwise."""
        self.signer.check(file_id, expires, signature, self._clock())


async def open_files(settings: ServerSettings, tasks: Tasks) -> FilePlane:
    """The file plane of `settings`: its store opened (what a crash left repaired) and the
    data directory's URL key (made on the first start). Raises ValueError for an unknown
    store or one that cannot be used (an S3 endpoint unreachable, its bucket missing),
    OSError when the data directory cannot be written."""
    store = create_file_store(settings)
    try:
        await store.open()
    except errors.UnavailableError as exc:
        raise ValueError(str(exc)) from None
    signer = await asyncio.to_thread(UrlSigner.load_or_create, settings.data_dir / KEY_FILE)
    return FilePlane(store, signer, settings, tasks)


def _check_name(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name.strip()
    if not base or len(base) > NAME_CHARS or not base.isprintable():
        raise errors.InvalidArgumentError(
            f"a file name is 1 to {NAME_CHARS} printable characters, not {errors.quote(name)}")
    return base


def _check_type(content_type: str) -> str:
    value = content_type.strip() or DEFAULT_TYPE
    if len(value) > NAME_CHARS or not value.isascii() or not value.isprintable() \
            or "/" not in value:
        raise errors.InvalidArgumentError(
            f"a content type is a media type such as image/png, not {errors.quote(value)}")
    return value


def _check_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise errors.InvalidArgumentError(
            f"a sha256 is 64 hex digits, not {errors.quote(sha256)}")
    return value
