"""A file store on any S3-compatible service (AWS S3, MinIO, Ceph, ...), for several servers.

Each file is up to three objects under `files/` in the bucket, named by its id:
- `<id>.json`: its record plus the id of its multipart upload, written whole by one PUT (S3
  replaces an object atomically), so every server sees the same record;
- `<id>.data`: its bytes, a multipart upload until complete. Parts are at least PART_BYTES
  (S3's floor for all but the last is 5 MiB): a write buffers in memory up to a part;
- `<id>.tail`: the bytes of an unfinished part, saved when an upload stream ends early
  (`pause`), so that another server, or this one restarted, resumes from them.

`received` is what S3 holds: the parts uploaded plus the tail saved. Bytes buffered in memory
are not counted: after a crash (no `pause`) an upload resumes from the last whole part.

The sha256 is computed as the bytes arrive; a resume that finds no running hash in this
process (after a restart, or on another server) cannot read the parts of an unfinished
upload back, so `finish` hashes the assembled object with ranged GETs instead (one extra
read of the file).

Credentials come from boto3's usual chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`~/.aws`, an instance role); they never appear in errors or logs. Every S3 call runs in a
thread; errors are NotFound/FailedPrecondition/OutOfRange as `base.FileStore` says, and
UnavailableError naming the endpoint and bucket when the service cannot be used.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from falrt import errors
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
PREFIX = "files/"
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit per multipart upload
# An unfinished multipart upload with no record is a crash between its start and its
# record's PUT; older than this, the expiry sweep aborts it.
ORPHAN_S = 24 * 3600.0
_PARALLEL = 16  # records fetched at once by `list`
_MISSING = ("NoSuchKey", "NoSuchUpload", "404", "NotFound")


class _Meta(msgspec.Struct, frozen=True):
    """The `<id>.json` object: the record, and the multipart upload once one started."""

    record: FileRecord
    upload_id: str = ""


_DECODE = msgspec.json.Decoder(_Meta)


@dataclass
class _Upload:
    """An unfinished file as this process knows it while an upload stream writes it."""

    meta: _Meta
    parts: list[dict[str, Any]] = field(default_factory=list)  # {PartNumber, ETag}
    parts_bytes: int = 0
    pending: bytearray = field(default_factory=bytearray)  # bytes after the parts
    tail_bytes: int = 0  # how much of `pending` the tail object holds
    assembled: bool = False  # `<id>.data` is whole (a crash came before its record said so)

    @property
    def received(self) -> int:
        return self.parts_bytes + self.tail_bytes


class S3FileStore:
    """`FileStore` on an S3 bucket (see the module docstring). Loop-affine; the per-file
    state below is only touched on the loop, between the threads' calls."""

    def __init__(self, bucket: str, endpoint: str = "", region: str = "") -> None:
        self.bucket = bucket
        self._client = boto3.client(
            "s3", endpoint_url=endpoint or None, region_name=region or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          connect_timeout=5, read_timeout=60, max_pool_connections=32,
                          s3={"addressing_style": "path" if endpoint else "auto"}))
        self.endpoint = self._client.meta.endpoint_url
        self._uploads: dict[str, _Upload] = {}
        # Per file: (offset, the sha256 of its bytes up to there), kept across the streams
        # of a file in this process; `received` only grows, so it is valid while it matches.
        self._hashes: dict[str, tuple[int, Any]] = {}

    async def open(self) -> None:
        await self._io(self._client.head_bucket, Bucket=self.bucket)

    async def close(self) -> None:
        self._uploads.clear()
        self._hashes.clear()
        self._client.close()

    async def create(self, new: NewFile, now: float) -> FileRecord:
        record = FileRecord(
            file_id=new_id(), name=new.name, content_type=new.content_type, size=new.size,
            received=0, complete=False, sha256=new.sha256, owner=new.owner, created_at=now,
            expires_at=new.expires_at)
        meta = _Meta(record)
        await self._io(self._put_meta, meta)
        self._uploads[record.file_id] = _Upload(meta)
        self._hashes[record.file_id] = (0, hashlib.sha256())
        return record

    async def write(self, file_id: str, offset: int, data: bytes) -> int:
        upload = self._uploads.get(check_id(file_id))
        if upload is None or offset != upload.parts_bytes + len(upload.pending):
            upload = await self._reload(file_id)  # (a resume, here or from another server)
        end = upload.parts_bytes + len(upload.pending)
        if offset != end:
            raise errors.FailedPreconditionError(
                f"file {file_id} has {upload.received} bytes: the upload must go on from "
                f"offset {upload.received}, not {offset}")
        kept = self._hashes.pop(file_id, None)
        upload.pending += data
        if kept is not None and kept[0] == offset:
            await self._io(kept[1].update, data)
            self._hashes[file_id] = (end + len(data), kept[1])
        part = _part_bytes(upload.meta.record.size)
        while len(upload.pending) >= part:
            await self._io(self._send_part, upload, part)
        return end + len(data)

    async def pause(self, file_id: str) -> None:
        """An upload stream ended before the last byte: saves the unfinished part as the
        tail object, so that a resume anywhere goes on from every byte sent."""
        upload = self._uploads.pop(file_id, None)
        if upload is not None and len(upload.pending) > upload.tail_bytes:
            try:
                await self._io(self._put_tail, upload)
            except errors.FalrtError as exc:
                log.warning("file %s: the unfinished part was not saved (%s); its upload "
                            "resumes from offset %d", file_id, exc, upload.received)

    async def finish(self, file_id: str) -> FileRecord:
        check_id(file_id)
        meta = await self._io(self._get_meta, file_id)
        if meta is None:
            raise not_found(file_id)
        if meta.record.complete:
            return meta.record
        try:
            return await self._finish(self._uploads.get(file_id)
                                      or await self._reload(file_id))
        finally:
            self._uploads.pop(file_id, None)  # (a failure: a resume starts from S3's bytes)

    async def _finish(self, upload: _Upload) -> FileRecord:
        file_id, size = upload.meta.record.file_id, upload.meta.record.size
        if upload.parts_bytes + len(upload.pending) != size:
            raise errors.FailedPreconditionError(
                f"file {file_id} has {upload.received} of its {size} bytes")
        await self._io(self._assemble, upload)
        kept = self._hashes.pop(file_id, None)
        digest = kept[1].hexdigest() if kept is not None and kept[0] == size \
            else await self._hash_object(file_id, size)
        announced = upload.meta.record.sha256
        if announced and digest != announced:
            await self.delete(file_id)
            raise errors.InvalidArgumentError(
                f"the bytes' sha256 is {digest}, not the {announced} announced: the file "
                "was deleted; upload it again")
        done = msgspec.structs.replace(upload.meta.record, complete=True, sha256=digest,
                                       received=size)
        await self._io(self._put_meta, _Meta(done))
        if upload.tail_bytes:
            await self._io(self._delete_key, _key(file_id, ".tail"))
        return done

    async def stat(self, file_id: str, now: float | None = None) -> FileRecord:
        record = await self._io(self._stat, check_id(file_id))
        if record is None or (now is not None and record.expired(now)):
            raise not_found(file_id)
        return record

    async def read(self, file_id: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """One ranged GET, its body read CHUNK_BYTES at a time (a deletion meanwhile does
        not cut a response S3 already streams)."""
        check_id(file_id)
        if start >= end:
            return
        body = await self._io(self._get_range, file_id, start, end)
        try:
            position = start
            while position < end:
                chunk = await self._io(body.read, min(CHUNK_BYTES, end - position))
                if not chunk:
                    raise errors.InternalError(f"file {file_id} is shorter than its record")
                position += len(chunk)
                yield chunk
        finally:
            await asyncio.shield(asyncio.to_thread(body.close))

    async def list(self, now: float, limit: int = LIST_LIMIT) -> list[FileRecord]:
        live = sorted((r for r in await self._records() if not r.expired(now)),
                      key=lambda r: r.created_at, reverse=True)
        return live[:limit]

    async def delete(self, file_id: str) -> bool:
        check_id(file_id)
        self._uploads.pop(file_id, None)
        self._hashes.pop(file_id, None)
        return await self._io(self._delete, file_id)

    async def delete_expired(self, now: float) -> int:
        expired = [r.file_id for r in await self._records() if r.expired(now)]
        for file_id in expired:
            await self.delete(file_id)
        await self._io(self._abort_orphans, now)
        return len(expired)

    # -- on the loop ------------------------------------------------------------------

    async def _reload(self, file_id: str) -> _Upload:
        """The file's upload state as S3 has it (at the start of a resumed stream)."""
        upload = await self._io(self._load, file_id)
        self._uploads[file_id] = upload
        return upload

    async def _records(self) -> builtins.list[FileRecord]:
        ids = await self._io(self._ids)
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(file_id: str) -> FileRecord | None:
            async with gate:
                return await self._io(self._stat, file_id)

        found = await asyncio.gather(*(one(file_id) for file_id in ids))
        return [record for record in found if record is not None]

    async def _hash_object(self, file_id: str, size: int) -> str:
        hasher = hashlib.sha256()
        async for chunk in self.read(file_id, 0, size):
            await self._io(hasher.update, chunk)
        return hasher.hexdigest()

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` in a thread, S3's failures as falrt's errors (never with credentials)."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ClientError as exc:
            raise self._client_error(exc) from None
        except BotoCoreError as exc:  # (unreachable, timed out, no credentials)
            raise errors.UnavailableError(
                f"the S3 service at {self.endpoint} (bucket {self.bucket}) cannot be used: "
                f"{type(exc).__name__}") from None

    def _client_error(self, exc: ClientError) -> errors.FalrtError:
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        where = f"the S3 service at {self.endpoint}"
        if code in ("NoSuchBucket", "404") and exc.operation_name == "HeadBucket":
            return errors.UnavailableError(f"{where} has no bucket {self.bucket}")
        if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "403"):
            return errors.UnavailableError(
                f"{where} refused {exc.operation_name} on bucket {self.bucket}: {code} "
                "(check the bucket and the AWS_* credentials)")
        if code in ("SlowDown", "ServiceUnavailable", "InternalError", "500", "503"):
            return errors.UnavailableError(f"{where} is unavailable ({code}); try again")
        return errors.InternalError(f"{where} answered {exc.operation_name} with {code}")

    # -- blocking parts, run in threads -------------------------------------------------

    def _put_meta(self, meta: _Meta) -> None:
        self._client.put_object(Bucket=self.bucket, Key=_key(meta.record.file_id, ".json"),
                                Body=msgspec.json.encode(meta),
                                ContentType="application/json")

    def _get_meta(self, file_id: str) -> _Meta | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=_key(file_id, ".json"))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        try:
            return _DECODE.decode(body["Body"].read())
        except msgspec.DecodeError:
            log.error("the file record %s does not parse; the file is ignored", file_id)
            return None

    def _load(self, file_id: str) -> _Upload:
        meta = self._get_meta(file_id)
        if meta is None:
            raise not_found(file_id)
        if meta.record.complete:
            raise errors.FailedPreconditionError(f"file {file_id} is complete already")
        upload = _Upload(meta)
        upload.parts, upload.parts_bytes = self._parts(meta)
        if upload.parts_bytes < 0:
            upload.parts_bytes, upload.assembled = meta.record.size, True
            return upload
        tail = self._get_tail(file_id, upload.parts_bytes)
        upload.pending += tail
        upload.tail_bytes = len(tail)
        return upload

    def _stat(self, file_id: str) -> FileRecord | None:
        meta = self._get_meta(file_id)
        if meta is None or meta.record.complete:
            return meta.record if meta else None
        try:
            parts_bytes = self._parts(meta)[1]
            if parts_bytes < 0:  # (assembled, not yet marked complete)
                return msgspec.structs.replace(meta.record, received=meta.record.size)
            tail = self._client.head_object(Bucket=self.bucket, Key=_key(file_id, ".tail"))
        except ClientError as exc:
            if not _missing(exc):
                raise
            tail = {}
        fresh = tail.get("Metadata", {}).get("offset") == str(parts_bytes)
        received = parts_bytes + (tail["ContentLength"] if fresh else 0)
        return msgspec.structs.replace(meta.record, received=received)

    def _parts(self, meta: _Meta) -> tuple[builtins.list[dict[str, Any]], int]:
        """The parts S3 holds of the file's multipart upload, and their bytes; -1 bytes
        when the upload was completed already (a crash before the record was marked)."""
        if not meta.upload_id:
            return [], 0
        parts, total = [], 0
        pages = self._client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=_key(meta.record.file_id, ".data"),
            UploadId=meta.upload_id)
        try:
            for page in pages:
                for part in page.get("Parts", []):
                    parts.append({"PartNumber": part["PartNumber"], "ETag": part["ETag"]})
                    total += part["Size"]
        except ClientError as exc:
            if not _missing(exc) or not self._assembled(meta.record):
                raise
            return [], -1
        return parts, total

    def _assembled(self, record: FileRecord) -> bool:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=_key(record.file_id, ".data"))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return bool(head["ContentLength"] == record.size)

    def _get_tail(self, file_id: str, parts_bytes: int) -> bytes:
        """The saved unfinished part, if it starts where the parts end (else it is stale:
        a crash after its part was sent and before it was deleted)."""
        try:
            got = self._client.get_object(Bucket=self.bucket, Key=_key(file_id, ".tail"))
        except ClientError as exc:
            if _missing(exc):
                return b""
            raise
        with got["Body"] as body:
            if got.get("Metadata", {}).get("offset") != str(parts_bytes):
                return b""
            data: bytes = body.read()
        return data

    def _put_tail(self, upload: _Upload) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=_key(upload.meta.record.file_id, ".tail"),
            Body=bytes(upload.pending), Metadata={"offset": str(upload.parts_bytes)})
        upload.tail_bytes = len(upload.pending)

    def _send_part(self, upload: _Upload, part_bytes: int) -> None:
        """Uploads the first `part_bytes` of the pending bytes as the next part (starting
        the multipart upload first if needed), then drops them and any saved tail."""
        file_id = upload.meta.record.file_id
        if not upload.meta.upload_id:
            started = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=_key(file_id, ".data"),
                ContentType=upload.meta.record.content_type)
            upload.meta = _Meta(upload.meta.record, started["UploadId"])
            self._put_meta(upload.meta)
        number = len(upload.parts) + 1
        whole = len(upload.pending) == part_bytes  # (the usual case: sent without a copy)
        body = upload.pending if whole else bytes(upload.pending[:part_bytes])
        sent = self._client.upload_part(
            Bucket=self.bucket, Key=_key(file_id, ".data"), UploadId=upload.meta.upload_id,
            PartNumber=number, Body=body)
        upload.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        upload.parts_bytes += part_bytes
        upload.pending = bytearray() if whole else upload.pending[part_bytes:]
        if upload.tail_bytes:
            self._delete_key(_key(file_id, ".tail"))
            upload.tail_bytes = 0

    def _assemble(self, upload: _Upload) -> None:
        """Makes `<id>.data` whole: the last part and CompleteMultipartUpload, or one PUT
        for a file that never filled a part."""
        record = upload.meta.record
        key = _key(record.file_id, ".data")
        if upload.assembled:
            return
        if not upload.meta.upload_id:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=bytes(upload.pending),
                                    ContentType=record.content_type)
            return
        if upload.pending or not upload.parts:
            self._send_part(upload, len(upload.pending))
        self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload.meta.upload_id,
            MultipartUpload={"Parts": upload.parts})

    def _get_range(self, file_id: str, start: int, end: int) -> Any:
        try:
            got = self._client.get_object(Bucket=self.bucket, Key=_key(file_id, ".data"),
                                          Range=f"bytes={start}-{end - 1}")
        except ClientError as exc:
            if _missing(exc):
                raise not_found(file_id) from None
            raise
        return got["Body"]

    def _ids(self) -> builtins.list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=PREFIX)
        return [item["Key"][len(PREFIX):-len(".json")] for page in pages
                for item in page.get("Contents", []) if item["Key"].endswith(".json")]

    def _delete(self, file_id: str) -> bool:
        meta = self._get_meta(file_id)
        if meta is None:
            return False
        self._delete_key(_key(file_id, ".json"))  # (first: without it, the bytes are invisible)
        if meta.upload_id and not meta.record.complete:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=_key(file_id, ".data"), UploadId=meta.upload_id)
            except ClientError as exc:
                if not _missing(exc):
                    raise
        self._delete_key(_key(file_id, ".data"))
        self._delete_key(_key(file_id, ".tail"))
        return True

    def _delete_key(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def _abort_orphans(self, now: float) -> None:
        """Aborts multipart uploads older than ORPHAN_S whose file has no record."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=PREFIX)
        for page in pages:
            for item in page.get("Uploads", []):
                file_id = item["Key"][len(PREFIX):].partition(".")[0]
                old = item["Initiated"].timestamp() < now - ORPHAN_S
                if old and self._get_meta(file_id) is None:
                    log.info("aborting the multipart upload of %s: it has no record", file_id)
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=item["Key"], UploadId=item["UploadId"])


def _key(file_id: str, suffix: str) -> str:
    return f"{PREFIX}{file_id}{suffix}"


def _part_bytes(size: int) -> int:
    """The part size of a file of `size` bytes: PART_BYTES, or more (in whole MiB) so that
    the file fits in S3's MAX_PARTS."""
    mib = 1024 * 1024
    per_part = -(-size // MAX_PARTS)
    return max(PART_BYTES, -(-per_part // mib) * mib)


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING
