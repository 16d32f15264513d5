"""Runners on the server's host (docs/files.md): files move through the local store's
directory instead of gRPC. The store's side (`unit`): a staging file filled by another
process is adopted with the store's own sha256 only when it is a plain file of the announced
size (not a symbolic or hard link to something else), and paths are made of checked ids
only. On a real server (`e2e`): a caller on the host reads and writes files through the
store; the local calls take ids, never paths; a failed write leaves no file; and a process
runner reads its input and writes its output with no gRPC transfer (the server's and the
runner's logs say so). Which runners do this at all is `files_local`'s table."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falrt import errors
from falrt.client import SyncClient
from falrt.client.files import FilesClient
from falrt.files.base import NewFile
from falrt.files.local import LocalFileStore
from falrt.server.fleet.launch import files_local
from falrt.settings import ServerSettings
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.test_files_apps import picture

NOW = 1_700_000_000.0
HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")


def new_file(size: int, sha256: str = "") -> NewFile:
    return NewFile(name="a.bin", content_type="application/octet-stream", size=size,
                   sha256=sha256, owner="local", expires_at=NOW + 3600)


async def staged(store: LocalFileStore, data: bytes, sha256: str = "") -> str:
    """A new file whose staging file another process filled with `data`; its id."""
    record = await store.create(new_file(len(data), sha256), NOW)
    store.staging_path(record.file_id).write_bytes(data)
    return record.file_id


# -- the store (unit) -----------------------------------------------------------------


@pytest.mark.unit
def test_a_filled_staging_file_is_adopted_with_the_stores_sha256_and_made_read_only(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = LocalFileStore(tmp_path)
        await store.open()
        data = os.urandom(3 * 1024 * 1024 + 5)
        file_id = await staged(store, data)
        done = await store.adopt(file_id)
        assert (done.complete, done.size) == (True, len(data))
        assert done.sha256 == hashlib.sha256(data).hexdigest()
        path = store.data_path(file_id)
        assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o444
        assert not store.staging_path(file_id).exists()

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_link_in_place_of_the_staging_file_is_refused_and_adopts_nothing(
    tmp_path: Path,
) -> None:
    """A symbolic link (to a file of the server's, say) or a hard link: a runner could
    otherwise have the server serve bytes it never wrote."""
    async def scenario() -> None:
        store = LocalFileStore(tmp_path / "files")
        await store.open()
        secret = tmp_path / "server-secret"
        secret.write_bytes(b"k" * 10)
        for make in (os.symlink, os.link):
            record = await store.create(new_file(10), NOW)
            staging = store.staging_path(record.file_id)
            staging.unlink()
            make(secret, staging)
            with pytest.raises(errors.FailedPreconditionError, match="not adopted"):
                await store.adopt(record.file_id)
            after = await store.stat(record.file_id)
            assert not after.complete and not store.data_path(record.file_id).exists()

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_staging_file_of_another_size_or_hash_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LocalFileStore(tmp_path)
        await store.open()
        record = await store.create(new_file(10), NOW)
        store.staging_path(record.file_id).write_bytes(b"x" * 11)
        with pytest.raises(errors.FailedPreconditionError, match="11 bytes, not the 10"):
            await store.adopt(record.file_id)
        wrong = await staged(store, b"abc", sha256=hashlib.sha256(b"abd").hexdigest())
        with pytest.raises(errors.InvalidArgumentError, match="sha256"):
            await store.adopt(wrong)
        with pytest.raises(errors.NotFoundError):
            await store.stat(wrong)  # (deleted, as a gRPC upload's would be)

    asyncio.run(scenario())


@pytest.mark.unit
@pytest.mark.parametrize("file_id", ["../../etc/passwd", "/etc/passwd", "a" * 31 + "/",
                                     "A" * 32, ""])
def test_local_paths_are_made_of_checked_ids_only(tmp_path: Path, file_id: str) -> None:
    store = LocalFileStore(tmp_path)
    for path_of in (store.data_path, store.staging_path):
        with pytest.raises(errors.InvalidArgumentError, match="32 lowercase hex"):
            path_of(file_id)
    with pytest.raises(errors.InvalidArgumentError):
        asyncio.run(store.adopt(file_id))


@pytest.mark.unit
@pytest.mark.parametrize(("backend", "store", "local"), [
    ("process", "local", True),
    ("process", "s3", False),   # the bytes are not on this disk
    ("docker", "local", False),  # the store's directory is not in the container
    ("ray", "local", False),     # runners on other hosts
])
def test_only_process_runners_of_a_local_store_move_files_through_its_directory(
    tmp_path: Path, backend: str, store: str, local: bool,
) -> None:
    settings = ServerSettings(data_dir=tmp_path, backend=backend, file_store=store)
    assert files_local(settings) is local


# -- a real server (e2e) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("files-local")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=["--http-listen", "127.0.0.1:0"]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def files(server: ServerProcess) -> Iterator[FilesClient]:
    with SyncClient(server.address) as client:
        yield FilesClient(client._channel)


@pytest.mark.e2e
def test_a_caller_on_the_host_reads_and_writes_files_through_the_local_store(
    files: FilesClient, tmp_path: Path,
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    info = files.upload_local(lambda staging: staging.write_bytes(data), len(data),
                              content_type="application/x-test", name="out.bin")
    assert (info.complete, info.size, info.name) == (True, len(data), "out.bin")
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.url
    assert files.read_bytes(info.file_id) == data  # (over gRPC: the same bytes)
    local = files.open_local(info.file_id)
    assert local.file.sha256 == info.sha256 and Path(local.path).read_bytes() == data
    assert httpx.get(info.url).content == data


@pytest.mark.e2e
def test_the_local_calls_take_ids_and_a_key_never_paths(
    files: FilesClient, server: ServerProcess,
) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        files.open_local("../../" + "0" * 32)
    with pytest.raises(errors.NotFoundError):
        files.open_local("0" * 32)
    with pytest.raises(errors.InvalidArgumentError):
        files.upload_local(lambda staging: None, -1)
    with SyncClient(server.address, key="nobody:nothing") as stranger, \
            pytest.raises(errors.UnauthenticatedError):
        FilesClient(stranger._channel).open_local("0" * 32)


@pytest.mark.e2e
def test_a_local_upload_whose_write_fails_leaves_no_file(files: FilesClient) -> None:
    before = {f.file_id for f in files.list()}

    def fail(staging: Path) -> None:
        staging.write_bytes(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        files.upload_local(fail, 10)
    assert {f.file_id for f in files.list()} == before


@pytest.mark.e2e
def test_a_process_runner_reads_its_input_and_writes_its_output_with_no_grpc_transfer(
    files: FilesClient, server: ServerProcess, tmp_path: Path,
) -> None:
    endpoint = server.deploy("tests/apps/negative.py::Negative")
    source = tmp_path / "in.png"
    source.write_bytes(picture(7)[1])
    uploaded = files.upload(source)
    with SyncClient(server.address) as client:
        out = client.subscribe(endpoint, {"image": uploaded.url})
    output_id = out["image"]["url"].split("/files/")[1].split("?")[0]
    assert out["input_sha256"] == uploaded.sha256
    wait_for(lambda: f"file {output_id} is adopted" in server.log())
    assert f"file {uploaded.file_id} is read in place" in server.log()
    runner_logs = "".join(p.read_text() for p in (server.data_dir / "runners").glob("*.log"))
    assert f"file {uploaded.file_id}: read from the server's store on this host" in runner_logs
    assert "files move over gRPC" not in runner_logs
