"""The file stores' contract, run on both stores: the local one on a real directory, the S3
one on a real S3 endpoint (moto_server, tests/s3server.py): write, read, resume, expiry,
errors; what a crash leaves of each; and URL signing, with signatures that fail when altered
or expired. The local store's cases are `unit`, the S3 store's `e2e` (another process)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from falrt import errors
from falrt.files.base import CHUNK_BYTES, FileStore, NewFile
from falrt.files.local import LocalFileStore
from falrt.files.s3 import PART_BYTES, S3FileStore
from falrt.files.signing import UrlSigner
from falrt.server.http.files_api import _range
from tests.s3server import S3Server

NOW = 1_700_000_000.0
Stores = Callable[[], FileStore]
S3 = pytest.param("s3", marks=pytest.mark.e2e)


@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.unit), S3])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """Makes store objects on one place (a directory; a fresh bucket): a second one made
    later is the same store after a restart."""
    if request.param == "local":
        yield lambda: LocalFileStore(tmp_path)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    yield lambda: S3FileStore(bucket, server.endpoint, "us-east-1")


def run(test: Callable[[Stores], Awaitable[None]]) -> Callable[[Stores], None]:
    """An async test run on its own event loop (as tests/test_tasks.py runs its scenarios)."""
    @functools.wraps(test)
    def sync(stores: Stores) -> None:
        asyncio.run(test(stores))  # type: ignore[arg-type]

    return sync


def new_file(size: int, sha256: str = "", expires_at: float = NOW + 3600) -> NewFile:
    return NewFile(name="a.bin", content_type="application/octet-stream", size=size,
                   sha256=sha256, owner="local", expires_at=expires_at)


async def read_all(store: FileStore, file_id: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(file_id, start, end)])


async def opened(stores: Stores) -> FileStore:
    store = stores()
    await store.open()
    return store


async def write_all(store: FileStore, file_id: str, offset: int, data: bytes) -> int:
    """Writes `data` at `offset` in CHUNK_BYTES pieces, as the file plane does."""
    for start in range(0, len(data), CHUNK_BYTES):
        offset = await store.write(file_id, offset, data[start:start + CHUNK_BYTES])
    return offset


@run
async def test_a_file_written_in_pieces_reads_back_whole_and_in_ranges(stores: Stores) -> None:
    data = os.urandom(2 * PART_BYTES + 17)  # (the S3 store: two whole parts and a last one)
    store = await opened(stores)
    record = await store.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
    offset = 0
    for start in range(0, len(data), 700_000):
        offset = await store.write(record.file_id, offset, data[start:start + 700_000])
    done = await store.finish(record.file_id)
    assert done.complete and done.received == len(data)
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.finish(record.file_id) == done  # (idempotent)
    assert await read_all(store, record.file_id, 0, len(data)) == data
    assert await read_all(store, record.file_id, 5, CHUNK_BYTES + 9) == data[5:CHUNK_BYTES + 9]
    assert await read_all(store, record.file_id, len(data) - 3, len(data)) == data[-3:]
    chunks = [len(c) async for c in store.read(record.file_id, 0, len(data))]
    assert max(chunks) <= CHUNK_BYTES  # (memory bounded: reads are chunked)
    assert (await stores().stat(record.file_id)).complete  # (another server sees it)
    await store.close()


@run
async def test_an_empty_file_completes_and_reads_as_nothing(stores: Stores) -> None:
    store = await opened(stores)
    record = await store.create(new_file(0), NOW)
    done = await store.finish(record.file_id)
    assert (done.complete, done.size, done.sha256) == (True, 0, hashlib.sha256().hexdigest())
    assert await read_all(store, record.file_id, 0, 0) == b""


@run
async def test_a_write_at_another_offset_than_the_stores_is_refused(stores: Stores) -> None:
    store = await opened(stores)
    record = await store.create(new_file(10), NOW)
    await store.write(record.file_id, 0, b"abcd")
    await store.pause(record.file_id)
    with pytest.raises(errors.FailedPreconditionError, match="offset 4"):
        await store.write(record.file_id, 2, b"xx")
    assert (await store.stat(record.file_id)).received == 4
    with pytest.raises(errors.FailedPreconditionError, match="has 4 of its 10 bytes"):
        await store.finish(record.file_id)


@run
async def test_an_upload_paused_then_resumed_by_a_restarted_store_hashes_the_whole_file(
    stores: Stores,
) -> None:
    data = os.urandom(PART_BYTES + CHUNK_BYTES + 5)
    first = await opened(stores)
    record = await first.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
    await write_all(first, record.file_id, 0, data[:1000])
    await first.pause(record.file_id)  # (the upload stream ended: what it sent counts)
    second = await opened(stores)  # (a restart, or another server: the running hash is gone)
    stat_ = await second.stat(record.file_id)
    assert (stat_.received, stat_.complete) == (1000, False)
    await write_all(second, record.file_id, 1000, data[1000:])
    assert (await second.finish(record.file_id)).sha256 == hashlib.sha256(data).hexdigest()
    assert await read_all(first, record.file_id, 0, len(data)) == data


@pytest.mark.e2e
def test_an_s3_upload_cut_by_a_crash_resumes_from_its_last_whole_part(
    s3_server: S3Server,
) -> None:
    """No `pause` (the server died): what S3 holds is the parts sent, not the buffer."""
    bucket = s3_server.new_bucket()
    data = os.urandom(PART_BYTES + 3 * CHUNK_BYTES)

    async def scenario() -> None:
        first = S3FileStore(bucket, s3_server.endpoint)
        record = await first.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
        assert await write_all(first, record.file_id, 0, data[:-CHUNK_BYTES]) \
            == len(data) - CHUNK_BYTES
        second = S3FileStore(bucket, s3_server.endpoint)
        assert (await second.stat(record.file_id)).received == PART_BYTES
        with pytest.raises(errors.FailedPreconditionError, match=f"offset {PART_BYTES}"):
            await second.write(record.file_id, len(data) - CHUNK_BYTES, data[-CHUNK_BYTES:])
        await write_all(second, record.file_id, PART_BYTES, data[PART_BYTES:])
        done = await second.finish(record.file_id)  # (hashed by reading the object back)
        assert done.sha256 == hashlib.sha256(data).hexdigest()
        assert await read_all(first, record.file_id, 0, len(data)) == data

    asyncio.run(scenario())


@pytest.mark.e2e
def test_an_s3_upload_assembled_before_a_crash_is_completed_by_the_next_finish(
    s3_server: S3Server,
) -> None:
    """The crash between CompleteMultipartUpload and the record's PUT, made by hand: the
    bytes are whole in S3, the record still says incomplete."""
    bucket, s3 = s3_server.new_bucket(), s3_server.client()
    data = os.urandom(PART_BYTES + 5)

    async def scenario() -> None:
        first = S3FileStore(bucket, s3_server.endpoint)
        record = await first.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
        await write_all(first, record.file_id, 0, data)
        key = f"files/{record.file_id}.data"
        upload_id = json.loads(s3.get_object(Bucket=bucket, Key=f"files/{record.file_id}.json")
                               ["Body"].read())["upload_id"]
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=data[-5:])
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in
                 s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]]
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
        second = S3FileStore(bucket, s3_server.endpoint)
        assert (await second.stat(record.file_id)).received == len(data)
        done = await second.finish(record.file_id)
        assert (done.complete, done.sha256) == (True, hashlib.sha256(data).hexdigest())
        assert await read_all(second, record.file_id, 0, len(data)) == data

    asyncio.run(scenario())


@pytest.mark.e2e
def test_an_unusable_s3_service_is_unavailable_naming_the_endpoint_not_the_secret(
    s3_server: S3Server,
) -> None:
    async def scenario() -> None:
        for store, says in [
            (S3FileStore("any", "http://127.0.0.1:9"), "http://127.0.0.1:9"),
            (S3FileStore("no-such-bucket", s3_server.endpoint), "no bucket no-such-bucket"),
        ]:
            with pytest.raises(errors.UnavailableError, match=says) as caught:
                await store.open()
            assert s3_server.secret_key not in str(caught.value)

    asyncio.run(scenario())


@run
async def test_bytes_that_do_not_match_the_announced_sha256_delete_the_file(
    stores: Stores,
) -> None:
    store = await opened(stores)
    record = await store.create(new_file(3, hashlib.sha256(b"abc").hexdigest()), NOW)
    await store.write(record.file_id, 0, b"abd")
    with pytest.raises(errors.InvalidArgumentError, match="sha256"):
        await store.finish(record.file_id)
    with pytest.raises(errors.NotFoundError):
        await store.stat(record.file_id)


@pytest.mark.unit
def test_a_crash_between_record_and_rename_is_repaired_on_open(tmp_path: Path) -> None:
    asyncio.run(crash_repaired(tmp_path))


async def crash_repaired(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    record = await store.create(new_file(3), NOW)
    await store.write(record.file_id, 0, b"abc")
    done = await store.finish(record.file_id)
    # The crash: the record says complete, the bytes were not renamed yet.
    os.replace(tmp_path / f"{done.file_id}.data", tmp_path / f"{done.file_id}.part")
    (tmp_path / ".x.json.1234.tmp").write_text("{half")  # a record being written
    (tmp_path / ("f" * 32 + ".part")).write_bytes(b"orphan")  # bytes without a record
    reopened = LocalFileStore(tmp_path)
    await reopened.open()
    assert await read_all(reopened, done.file_id, 0, 3) == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{done.file_id}.json", f"{done.file_id}.data"])


@run
async def test_expired_files_are_not_found_and_are_swept(stores: Stores) -> None:
    store = await opened(stores)
    old = await store.create(new_file(0, expires_at=NOW + 10), NOW)
    await store.finish(old.file_id)
    young = await store.create(new_file(0, expires_at=NOW + 100), NOW + 1)
    await store.finish(young.file_id)
    with pytest.raises(errors.NotFoundError):
        await store.stat(old.file_id, NOW + 10)
    assert [r.file_id for r in await store.list(NOW)] == [young.file_id, old.file_id]
    assert [r.file_id for r in await store.list(NOW + 10)] == [young.file_id]
    assert await store.delete_expired(NOW + 10) == 1
    with pytest.raises(errors.NotFoundError):
        await store.stat(old.file_id)  # (gone, not only expired)
    assert (await store.stat(young.file_id, NOW + 10)).complete
    assert await store.delete(young.file_id)
    assert not await store.delete(young.file_id)
    with pytest.raises(errors.NotFoundError):
        await read_all(store, young.file_id, 0, 1)


@run
async def test_ids_that_are_not_ids_never_become_paths(stores: Stores) -> None:
    store = stores()
    for bad in ("../../etc/passwd", "A" * 32, "", "0" * 31):
        with pytest.raises(errors.InvalidArgumentError):
            await store.stat(bad)


@pytest.mark.unit
def test_a_signed_url_verifies_until_it_expires_and_not_when_altered(tmp_path: Path) -> None:
    signer = UrlSigner.load_or_create(tmp_path / "files_url.key")
    assert stat.S_IMODE((tmp_path / "files_url.key").stat().st_mode) == 0o600
    file_id, expires = "ab" * 16, int(NOW) + 60
    signature = signer.sign(file_id, expires)
    signer.check(file_id, str(expires), signature, NOW)
    assert UrlSigner.load_or_create(tmp_path / "files_url.key").sign(file_id, expires) \
        == signature  # (the key is kept)
    for file_, expires_, signature_, now in [
        (file_id, str(expires), signature, NOW + 60),  # expired
        ("cd" * 16, str(expires), signature, NOW),  # another file
        (file_id, str(expires + 1), signature, NOW),  # a later expiry
        (file_id, str(expires), signature[:-1] + ("1" if signature[-1] == "0" else "0"),
         NOW),  # another signature
        (file_id, "soon", signature, NOW),
    ]:
        with pytest.raises(errors.PermissionDeniedError):
            signer.check(file_, expires_, signature_, now)
    assert UrlSigner(os.urandom(32)).sign(file_id, expires) != signature


@pytest.mark.unit
@pytest.mark.parametrize(("header", "answer"), [
    (None, (0, 100, False)),
    ("bytes=0-9", (0, 10, True)),
    ("bytes=90-", (90, 100, True)),
    ("bytes=-10", (90, 100, True)),
    ("bytes=95-200", (95, 100, True)),
    ("bytes=0-1,5-6", (0, 100, False)),  # several ranges: the whole file
    ("items=0-1", (0, 100, False)),
])
def test_a_range_header_names_one_byte_range(
    header: str | None, answer: tuple[int, int, bool]
) -> None:
    assert _range(header, 100) == answer


@pytest.mark.unit
def test_a_range_past_the_end_is_out_of_range() -> None:
    with pytest.raises(errors.OutOfRangeError):
        _range("bytes=100-", 100)
