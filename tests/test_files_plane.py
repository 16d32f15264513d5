"""The file plane's rules (falrt/server/files.py) over a real local store: what an upload may
announce, offsets, bytes past the size, one writer per file, the expiry sweep, URLs; and the
edge's conversion of a record to FileInfo. Time is data: the plane's clock is a list."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from falrt import errors
from falrt.files.base import CHUNK_BYTES, FileRecord
from falrt.files.local import LocalFileStore
from falrt.files.signing import UrlSigner
from falrt.server.api.files_service import file_info
from falrt.server.files import MAX_EXPIRY_S, FilePlane
from falrt.server.tasks import Tasks
from falrt.settings import ServerSettings

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
LIMIT = 10 * CHUNK_BYTES


def run(test: Callable[[FilePlane, list[float]], Awaitable[None]]) -> Callable[[Path], None]:
    """Runs `test` on its own event loop with a plane over `tmp_path` and its clock."""
    def sync(tmp_path: Path) -> None:
        async def scenario() -> None:
            clock = [NOW]
            settings = ServerSettings(data_dir=tmp_path, max_file_bytes=LIMIT,
                                      file_expiry_s=3600.0, public_url="https://files.test")
            plane = FilePlane(LocalFileStore(tmp_path / "files"), UrlSigner(b"k" * 32),
                              settings, Tasks("files"), clock=lambda: clock[0])
            await plane.open()
            try:
                await test(plane, clock)
            finally:
                await plane.close()

        asyncio.run(scenario())

    sync.__name__ = test.__name__
    return sync


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def started(plane: FilePlane, size: int, expires_in_s: float = 0) -> FileRecord:
    return await plane.create(plane.new_file("local", "dir/a.png", "image/png", size,
                                             expires_in_s=expires_in_s))


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"size": LIMIT + 1}, errors.PayloadTooLargeError),
    ({"size": -1}, errors.InvalidArgumentError),
    ({"name": ""}, errors.InvalidArgumentError),
    ({"name": "/"}, errors.InvalidArgumentError),
    ({"name": "x" * 256}, errors.InvalidArgumentError),
    ({"name": "bell\a"}, errors.InvalidArgumentError),
    ({"content_type": "png"}, errors.InvalidArgumentError),
    ({"sha256": "ab"}, errors.InvalidArgumentError),
    ({"expires_in_s": -1}, errors.InvalidArgumentError),
    ({"expires_in_s": MAX_EXPIRY_S + 1}, errors.InvalidArgumentError),
])
def test_an_announcement_out_of_bounds_is_refused(
    tmp_path: Path, kwargs: dict[str, object], error: type[errors.FalrtError],
) -> None:
    plane = FilePlane(LocalFileStore(tmp_path), UrlSigner(b"k" * 32),
                      ServerSettings(data_dir=tmp_path, max_file_bytes=LIMIT), Tasks("files"))
    announced: dict[str, object] = {"owner": "local", "name": "a.bin", "content_type": "",
                                    "size": 1, **kwargs}
    with pytest.raises(error):
        plane.new_file(**announced)  # type: ignore[arg-type]


@run
async def test_a_new_file_keeps_its_base_name_and_the_default_expiry(
    plane: FilePlane, clock: list[float]
) -> None:
    record = await started(plane, 3)
    assert (record.name, record.content_type, record.expires_at) == ("a.png", "image/png",
                                                                     NOW + 3600)
    assert (await started(plane, 0, expires_in_s=60)).expires_at == NOW + 60


@run
async def test_an_upload_completes_once_its_bytes_arrived_and_gets_a_signed_url(
    plane: FilePlane, clock: list[float]
) -> None:
    record = await started(plane, 2 * CHUNK_BYTES + 1)
    data = os.urandom(2 * CHUNK_BYTES + 1)
    half = await plane.upload(record.file_id, 0, chunks(data[:CHUNK_BYTES + 7]))
    assert (half.complete, half.received, plane.url(half)) == (False, CHUNK_BYTES + 7, "")
    done = await plane.upload(record.file_id, half.received,
                              chunks(data[CHUNK_BYTES + 7:]))
    assert done.complete
    url = plane.url(done)
    assert url.startswith(f"https://files.test/files/{done.file_id}?expires={int(NOW + 3600)}&")
    plane.check_signature(done.file_id, str(int(NOW + 3600)), url.rpartition("=")[2])
    with pytest.raises(errors.FailedPreconditionError, match="complete already"):
        await plane.upload(record.file_id, done.size, chunks(b"x"))


@run
async def test_bytes_past_the_size_and_wrong_offsets_fail_the_upload(
    plane: FilePlane, clock: list[float]
) -> None:
    record = await started(plane, 4)
    with pytest.raises(errors.InvalidArgumentError, match="more bytes"):
        await plane.upload(record.file_id, 0, chunks(b"abc", b"de"))
    with pytest.raises(errors.InvalidArgumentError, match=">= 0"):
        await plane.upload(record.file_id, -1, chunks(b"a"))
    with pytest.raises(errors.FailedPreconditionError, match="offset 0"):
        await plane.upload(record.file_id, 2, chunks(b"cd"))


@run
async def test_a_resumed_upload_waits_for_the_stream_it_replaces(
    plane: FilePlane, clock: list[float]
) -> None:
    record = await started(plane, 4)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"ab"
        await gate.wait()

    first = asyncio.create_task(plane.upload(record.file_id, 0, slow()))
    await asyncio.sleep(0)
    second = asyncio.create_task(plane.upload(record.file_id, 2, chunks(b"cd")))
    await asyncio.sleep(0.05)
    assert not second.done()  # (waiting for the first stream's lock)
    first.cancel()  # the first caller went away; its buffered bytes are lost, none written
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(errors.FailedPreconditionError, match="offset 0"):
        await second
    assert (await plane.upload(record.file_id, 0, chunks(b"abcd"))).complete
    assert plane._writing == {}


@run
async def test_the_sweep_deletes_expired_files_and_reads_see_them_gone_at_once(
    plane: FilePlane, clock: list[float]
) -> None:
    old = await started(plane, 0, expires_in_s=10)
    young = await started(plane, 0, expires_in_s=100)
    clock[0] = NOW + 10
    with pytest.raises(errors.NotFoundError):
        await plane.stat(old.file_id)
    plane.start()
    files = plane.store
    assert isinstance(files, LocalFileStore)
    for _ in range(200):  # (the sweep's first pass runs at once, in threads)
        if not (files.root / f"{old.file_id}.json").exists():
            break
        await asyncio.sleep(0.01)
    assert not (files.root / f"{old.file_id}.json").exists()
    assert (await plane.stat(young.file_id)).file_id == young.file_id


def test_a_record_converts_to_file_info_field_for_field() -> None:
    record = FileRecord(file_id="ab" * 16, name="a.png", content_type="image/png", size=5,
                        received=5, complete=True, sha256="cd" * 32, owner="local",
                        created_at=NOW + 0.25, expires_at=NOW + 60)
    info = file_info(record, "https://u")
    assert (info.file_id, info.name, info.content_type, info.size, info.received,
            info.complete, info.sha256, info.owner, info.url) == (
        record.file_id, record.name, record.content_type, 5, 5, True, record.sha256, "local",
        "https://u")
    assert info.created_at.ToMicroseconds() == int((NOW + 0.25) * 1e6)
    assert info.expires_at.seconds == int(NOW + 60)
