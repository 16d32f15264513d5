"""The blocking client of the Files service (docs/files.md): upload (resumed after an
interruption), download, stat, list, delete.

Memory stays bounded: files are read and written in CHUNK_BYTES pieces as they stream. An
upload ends by checking the server's sha256 against the local file's; a download checks
the bytes it received against the server's.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from falrt import errors
from falrt.client.rpc_errors import translate_rpc_errors
from falrt.v1 import files_pb2, files_pb2_grpc

CHUNK_BYTES = 1024 * 1024
# The chunks of an upload from memory (`upload_bytes`): the most files.proto advises, as
# fewer, larger messages move bytes in memory about twice as fast (bench/files.py). A file
# is sent in CHUNK_BYTES: 4 MiB messages (with the server writing 8 MiB at a time) gained
# nothing measurable there and grew the server's RSS during a 1 GiB upload by 87 MiB instead
# of 15 to 31 (tests/test_files.py, bench/RESULTS.md).
MEMORY_CHUNK_BYTES = 4 * CHUNK_BYTES
# Interrupted uploads are resumed this many times (each from the server's offset).
RESUMES = 3
# How long a resume waits for the server to be reachable again (a restart).
RECONNECT_S = 60.0
_RESUMABLE = (errors.UnavailableError, errors.InternalError)
Progress = Callable[[int], None]  # called with the bytes done so far


class FilesClient:
    """Files over one gRPC channel (the caller's: closing it is the caller's job). Safe to
    use from several threads."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = files_pb2_grpc.FilesStub(channel)

    def upload(
        self, path: str | os.PathLike[str], *, content_type: str = "", name: str = "",
        expires_in_s: int = 0, progress: Progress | None = None,
    ) -> files_pb2.FileInfo:
        """Uploads the file at `path`; returns the complete file's info (`url`: its signed
        URL). An interrupted stream (UNAVAILABLE, INTERNAL) is resumed from the offset the
        server has, up to RESUMES times, waiting up to RECONNECT_S for the server to be back
        (a server restarted meanwhile keeps what it had written). Raises falrt errors."""
        source = Path(path)
        size = source.stat().st_size
        header = files_pb2.UploadHeader(
            name=name or source.name, size=size, expires_in_s=expires_in_s,
            content_type=content_type or mimetypes.guess_type(source.name)[0] or "")
        with translate_rpc_errors():
            info = self._stub.StartUpload(header)
        hasher: Any = hashlib.sha256()  # (what was sent, while no resume re-sends a part)
        for attempt in range(RESUMES + 1):
            try:
                info = self.resume(source, info.file_id, info.received, progress, hasher)
                break
            except _RESUMABLE:
                if attempt == RESUMES:
                    raise
                info, hasher = self.status(info.file_id, wait_s=RECONNECT_S), None
                if info.complete:  # (the last stream broke after its last byte)
                    break
        return _checked(info, source, hasher.hexdigest() if hasher else file_sha256(source))

    def upload_bytes(
        self, data: bytes, *, content_type: str = "", name: str = "payload",
        expires_in_s: int = 0,
    ) -> files_pb2.FileInfo:
        """Uploads `data` as one file (one stream, sha256-checked by the server); returns the
        complete file's info. Not resumed: the caller holds the bytes and may send them
        again. Raises falrt errors."""
        header = files_pb2.UploadHeader(
            name=name, content_type=content_type, size=len(data), expires_in_s=expires_in_s,
            sha256=hashlib.sha256(data).hexdigest())

        def requests() -> Iterator[files_pb2.UploadRequest]:
            yield files_pb2.UploadRequest(header=header)
            view = memoryview(data)
            for start in range(0, len(data), MEMORY_CHUNK_BYTES):
                chunk = bytes(view[start:start + MEMORY_CHUNK_BYTES])
                yield files_pb2.UploadRequest(chunk=chunk)

        with translate_rpc_errors():
            info = self._stub.Upload(requests()).file
        if not info.complete:
            raise errors.InternalError(
                f"the upload stopped at {info.received} of {info.size} bytes")
        return info

    def read_bytes(self, file_id: str) -> bytes:
        """A complete file's bytes, in memory, checked against its sha256."""
        parts, hasher = [], hashlib.sha256()
        info = files_pb2.FileInfo()
        for message in self.chunks(file_id):
            if message.HasField("file"):
                info = message.file
            chunk = message.chunk  # (each read of the field copies the bytes)
            parts.append(chunk)
            hasher.update(chunk)
        if hasher.hexdigest() != info.sha256:
            raise errors.InternalError(
                f"the bytes of file {file_id} hash to {hasher.hexdigest()}, not {info.sha256}")
        return b"".join(parts)

    def resume(
        self, path: Path, file_id: str, offset: int, progress: Progress | None = None,
        hasher: Any = None,
    ) -> files_pb2.FileInfo:
        """Sends the bytes of `path` from `offset` into the file `file_id` (one Upload
        call; `hasher`, a hashlib object, is updated with them); returns the file's info as
        the server has it after."""
        with path.open("rb") as source, translate_rpc_errors():
            source.seek(offset)
            requests = _upload_requests(file_id, offset, source, progress, hasher)
            return self._stub.Upload(requests).file

    def status(self, file_id: str, wait_s: float = 0) -> files_pb2.FileInfo:
        """How far an upload got; with `wait_s`, waits that long for an unreachable server
        (restarting, say) to answer."""
        request = files_pb2.UploadStatusRequest(file_id=file_id)
        if not wait_s:
            with translate_rpc_errors():
                return self._stub.UploadStatus(request)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with translate_rpc_errors():
                    return self._stub.UploadStatus(request, wait_for_ready=True,
                                                   timeout=max(deadline - time.monotonic(), 0.01))
            except errors.UnavailableError:
                # Sent on the dead server's connection before the channel saw it break: the
                # next call waits (wait_for_ready) for a connection to the server now there.
                if time.monotonic() >= deadline:
                    raise

    # -- same-host transfers (docs/files.md, "Runners on the server's host") ----------

    def open_local(self, file_id: str) -> files_pb2.LocalFile:
        """A complete file's info and the path of its bytes in the server's local store,
        for a caller on the server's host (copy them; never write there).
        FailedPreconditionError when the server's store is not local."""
        with translate_rpc_errors():
            return self._stub.OpenLocal(files_pb2.OpenLocalRequest(file_id=file_id))

    def upload_local(
        self, write: Callable[[Path], object], size: int, *, content_type: str = "",
        name: str = "output", expires_in_s: int = 0,
    ) -> files_pb2.FileInfo:
        """Uploads `size` bytes without sending them: the server makes the file and names
        its staging file, `write(path)` fills it (on this host), and the server hashes and
        completes it. Returns the complete file's info. The file is deleted when `write`
        raises (which is re-raised) or the server refuses the staging file.
        FailedPreconditionError when the server's store is not local."""
        header = files_pb2.UploadHeader(name=name, content_type=content_type, size=size,
                                        expires_in_s=expires_in_s)
        with translate_rpc_errors():
            local = self._stub.StartLocalUpload(header)
        try:
            write(Path(local.path))
            with translate_rpc_errors():
                return self._stub.FinishLocal(
                    files_pb2.FinishLocalRequest(file_id=local.file.file_id))
        except BaseException:
            with contextlib.suppress(errors.FalrtError):
                self.delete(local.file.file_id)
            raise

    def stat(self, file_id: str) -> files_pb2.FileInfo:
        with translate_rpc_errors():
            return self._stub.Stat(files_pb2.StatRequest(file_id=file_id))

    def list(self, limit: int = 0) -> list[files_pb2.FileInfo]:
        with translate_rpc_errors():
            return list(self._stub.List(files_pb2.ListRequest(limit=limit)).files)

    def delete(self, file_id: str) -> None:
        with translate_rpc_errors():
            self._stub.Delete(files_pb2.DeleteRequest(file_id=file_id))

    def chunks(self, file_id: str, offset: int = 0) -> Iterator[files_pb2.DownloadResponse]:
        """The Download stream; the first message carries the file's info."""
        call = self._stub.Download(files_pb2.DownloadRequest(file_id=file_id, offset=offset))
        try:
            with translate_rpc_errors():
                yield from call
        finally:
            call.cancel()

    def download(
        self, file_id: str, dest: str | os.PathLike[str], progress: Progress | None = None
    ) -> files_pb2.FileInfo:
        """Writes the file to `dest` (through a temporary file beside it, renamed once its
        sha256 matched); returns its info."""
        target = Path(dest)
        tmp = target.with_name(f".{target.name}.falrt-part")
        info = files_pb2.FileInfo()
        hasher, done = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as out:
                for message in self.chunks(file_id):
                    if message.HasField("file"):
                        info = message.file
                    chunk = message.chunk  # (each read of the field copies the bytes)
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done)
            if hasher.hexdigest() != info.sha256:
                raise errors.InternalError(
                    f"the bytes received hash to {hasher.hexdigest()}, not {info.sha256}")
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return info


def _upload_requests(
    file_id: str, offset: int, source: BinaryIO, progress: Progress | None, hasher: Any
) -> Iterator[files_pb2.UploadRequest]:
    yield files_pb2.UploadRequest(resume=files_pb2.UploadResume(file_id=file_id, offset=offset))
    done = offset
    while chunk := source.read(CHUNK_BYTES):
        if hasher is not None:
            hasher.update(chunk)
        yield files_pb2.UploadRequest(chunk=chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)


def _checked(info: files_pb2.FileInfo, source: Path, sha256: str) -> files_pb2.FileInfo:
    """`info` of a complete upload whose sha256 is the one of the bytes sent (`sha256`);
    InternalError else (the file changed while it was sent, or the stream broke for
    good)."""
    if not info.complete:
        raise errors.InternalError(
            f"the upload of {source} stopped at {info.received} of {info.size} bytes")
    if info.sha256 != sha256:
        raise errors.InternalError(f"{source} changed while it was uploaded; upload it again")
    return info


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def url_of(info: files_pb2.FileInfo) -> str:
    """The uploaded file's signed URL; FailedPreconditionError when the server has no HTTP
    edge to serve it at."""
    if not info.url:
        raise errors.FailedPreconditionError(
            f"file {info.file_id} is uploaded but the server serves no HTTP edge to fetch it "
            "from: start it with --http-listen (or --public-url)")
    return info.url


__all__ = ["FilesClient", "file_sha256", "url_of"]
