"""The local file store and URL signing, on a real directory: write, read, resume, expiry,
what a crash leaves, and signatures that fail when altered or expired."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from falrt import errors
from falrt.files.base import CHUNK_BYTES, NewFile
from falrt.files.local import LocalFileStore
from falrt.files.signing import UrlSigner
from falrt.server.http.files_api import _range

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


def run(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """An async test run on its own event loop (as tests/test_tasks.py runs its scenarios)."""
    @functools.wraps(test)
    def sync(tmp_path: Path) -> None:
        asyncio.run(test(tmp_path))  # type: ignore[arg-type]

    return sync


def new_file(size: int, sha256: str = "", expires_at: float = NOW + 3600) -> NewFile:
    return NewFile(name="a.bin", content_type="application/octet-stream", size=size,
                   sha256=sha256, owner="local", expires_at=expires_at)


async def read_all(store: LocalFileStore, file_id: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(file_id, start, end)])


@run
async def test_a_file_written_in_pieces_reads_back_whole_and_in_ranges(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 17)
    store = LocalFileStore(tmp_path)
    await store.open()
    record = await store.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
    offset = 0
    for start in range(0, len(data), 100_000):
        offset = await store.write(record.file_id, offset, data[start:start + 100_000])
    done = await store.finish(record.file_id)
    assert done.complete and done.received == len(data)
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert await read_all(store, record.file_id, 0, len(data)) == data
    assert await read_all(store, record.file_id, 5, CHUNK_BYTES + 9) == data[5:CHUNK_BYTES + 9]
    chunks = [len(c) async for c in store.read(record.file_id, 0, len(data))]
    assert max(chunks) <= CHUNK_BYTES  # (memory bounded: reads are chunked)


@run
async def test_a_write_at_another_offset_than_the_stores_is_refused(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    record = await store.create(new_file(10), NOW)
    await store.write(record.file_id, 0, b"abcd")
    with pytest.raises(errors.FailedPreconditionError, match="offset 4"):
        await store.write(record.file_id, 2, b"xx")
    assert (await store.stat(record.file_id)).received == 4


@run
async def test_an_upload_resumed_by_a_restarted_store_hashes_the_whole_file(
    tmp_path: Path,
) -> None:
    data = os.urandom(CHUNK_BYTES + 5)
    first = LocalFileStore(tmp_path)
    await first.open()
    record = await first.create(new_file(len(data), hashlib.sha256(data).hexdigest()), NOW)
    await first.write(record.file_id, 0, data[:1000])
    second = LocalFileStore(tmp_path)  # (a restart: the running hash is gone)
    await second.open()
    stat_ = await second.stat(record.file_id)
    assert (stat_.received, stat_.complete) == (1000, False)
    await second.write(record.file_id, 1000, data[1000:])
    assert (await second.finish(record.file_id)).sha256 == hashlib.sha256(data).hexdigest()


@run
async def test_bytes_that_do_not_match_the_announced_sha256_delete_the_file(
    tmp_path: Path,
) -> None:
    store = LocalFileStore(tmp_path)
    record = await store.create(new_file(3, hashlib.sha256(b"abc").hexdigest()), NOW)
    await store.write(record.file_id, 0, b"abd")
    with pytest.raises(errors.InvalidArgumentError, match="sha256"):
        await store.finish(record.file_id)
    with pytest.raises(errors.NotFoundError):
        await store.stat(record.file_id)


@run
async def test_a_crash_between_record_and_rename_is_repaired_on_open(tmp_path: Path) -> None:
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
async def test_expired_files_are_not_found_and_are_swept(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    old = await store.create(new_file(0, expires_at=NOW + 10), NOW)
    await store.finish(old.file_id)
    young = await store.create(new_file(0, expires_at=NOW + 100), NOW)
    await store.finish(young.file_id)
    with pytest.raises(errors.NotFoundError):
        await store.stat(old.file_id, NOW + 10)
    assert [r.file_id for r in await store.list(NOW + 10)] == [young.file_id]
    assert await store.delete_expired(NOW + 10) == 1
    assert not (tmp_path / f"{old.file_id}.data").exists()
    assert (await store.stat(young.file_id, NOW + 10)).complete


@run
async def test_ids_that_are_not_ids_never_become_paths(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 32, "", "0" * 31):
        with pytest.raises(errors.InvalidArgumentError):
            await store.stat(bad)


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


def test_a_range_past_the_end_is_out_of_range() -> None:
    with pytest.raises(errors.OutOfRangeError):
        _range("bytes=100-", 100)
