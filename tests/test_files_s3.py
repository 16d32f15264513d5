"""The S3 file store end to end: two real servers (`--file-store s3`, the same bucket of a real
S3 endpoint, moto_server: tests/s3server.py) and the clients. A file uploaded through one
server downloads through the other with the same sha256, by key and by signed URL (the
servers share their URL key file, as docs/files.md says); an upload cut short on one server
resumes on the other; delete and expiry are seen by both; the S3 secret reaches no log; an
unreachable endpoint stops the server at start with a message naming it."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falrt import errors
from falrt.client import SyncClient, credentials
from falrt.client.files import FilesClient, file_sha256
from falrt.files.signing import KEY_FILE
from falrt.v1 import files_pb2
from shim.files_connection import FilesConnection
from shim.payloads import PayloadFiles
from tests.harness import FALRT, ServerProcess, stop_cleanly, wait_for
from tests.s3server import S3Server
from tests.test_files import random_file

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")


def s3_options(s3: S3Server, bucket: str) -> list[str]:
    return ["--http-listen", "127.0.0.1:0", "--file-store", "s3", "--s3-endpoint",
            s3.endpoint, "--s3-bucket", bucket, "--s3-region", "us-east-1"]


@pytest.fixture(scope="module")
def servers(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one bucket, each with its own data directory and key; the second
    starts with the first's URL key (files_url.key)."""
    root = tmp_path_factory.mktemp("files-s3")
    options = s3_options(s3_server, s3_server.new_bucket())
    first = ServerProcess(root / "a", root / "a.log", extra=options).start()
    (root / "b").mkdir()
    shutil.copy(root / "a" / KEY_FILE, root / "b" / KEY_FILE)
    second = ServerProcess(root / "b", root / "b.log", extra=options)
    try:
        second.start()
        yield first, second
    finally:
        stop_cleanly(first, second)
    for server in (first, second):
        assert s3_server.secret_key not in server.log()


def files_of(server: ServerProcess) -> Iterator[FilesClient]:
    with SyncClient(server.address) as client:
        yield FilesClient(client._channel)


@pytest.fixture(scope="module")
def first(servers: tuple[ServerProcess, ServerProcess]) -> Iterator[FilesClient]:
    yield from files_of(servers[0])


@pytest.fixture(scope="module")
def second(servers: tuple[ServerProcess, ServerProcess]) -> Iterator[FilesClient]:
    yield from files_of(servers[1])


def http_base(server: ServerProcess) -> str:
    return "http://" + server.wait_for_output(HTTP_LISTENING).group(1)


def keyed(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=http_base(server), timeout=60, headers={
        "authorization": f"Key {credentials.key_for(server.address)}"})


def sha256_of(url: str) -> str:
    hasher = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes(MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


def test_a_file_uploaded_through_one_server_downloads_through_both(
    servers: tuple[ServerProcess, ServerProcess], first: FilesClient, second: FilesClient,
    tmp_path: Path,
) -> None:
    source = tmp_path / "large.bin"
    sha256 = random_file(source, 20)  # (the S3 store: two 8 MiB parts and a last one)
    info = first.upload(source)
    assert (info.complete, info.sha256, info.size) == (True, sha256, 20 * MIB)
    for files, name in ((first, "a.bin"), (second, "b.bin")):
        files.download(info.file_id, tmp_path / name)
        assert file_sha256(tmp_path / name) == sha256
    assert sha256_of(info.url) == sha256  # the signed URL, no key
    on_second = info.url.replace(http_base(servers[0]), http_base(servers[1]))
    assert on_second != info.url and sha256_of(on_second) == sha256  # (the shared URL key)
    ranged = httpx.get(on_second, headers={"range": "bytes=5-9"})
    assert (ranged.status_code, ranged.content) == (206, source.read_bytes()[5:10])
    assert info.file_id in {f.file_id for f in second.list()}

    second.delete(info.file_id)
    with pytest.raises(errors.NotFoundError):
        first.stat(info.file_id)
    assert httpx.get(info.url).status_code == 404
    assert info.file_id not in {f.file_id for f in first.list()}


def test_an_upload_cut_short_on_one_server_resumes_on_the_other(
    first: FilesClient, second: FilesClient, tmp_path: Path,
) -> None:
    source = tmp_path / "resumed.bin"
    sha256 = random_file(source, 11)
    start = tmp_path / "start.bin"
    start.write_bytes(source.read_bytes()[:3 * MIB + 5])
    info = first._stub.StartUpload(files_pb2.UploadHeader(name="resumed.bin", size=11 * MIB))
    cut = first.resume(start, info.file_id, 0)  # (the stream ends before the last byte)
    assert (cut.complete, cut.received) == (False, 3 * MIB + 5)
    assert second.status(info.file_id).received == 3 * MIB + 5  # (S3 holds it: a tail)
    with pytest.raises(errors.FailedPreconditionError, match=f"offset {3 * MIB + 5}"):
        second.resume(source, info.file_id, 0)
    done = second.resume(source, info.file_id, 3 * MIB + 5)
    assert (done.complete, done.sha256, done.size) == (True, sha256, 11 * MIB)
    assert first.stat(info.file_id).sha256 == sha256


def test_an_expired_file_is_not_found_on_either_server(
    servers: tuple[ServerProcess, ServerProcess], first: FilesClient, second: FilesClient,
    tmp_path: Path,
) -> None:
    source = tmp_path / "short.txt"
    source.write_text("short-lived")
    uploaded = time.monotonic()  # before the server made the file and started its second
    info = first.upload(source, expires_in_s=1)
    with keyed(servers[1]) as http:
        assert http.get(f"/files/{info.file_id}").text == "short-lived"

        def expired() -> bool:
            try:
                second.stat(info.file_id)
            except errors.NotFoundError:
                return True
            return False

        wait_for(expired, timeout=10, what="the file expired")  # (wall-clock expiry)
        assert time.monotonic() - uploaded >= 0.9  # not before its time
        assert http.get(f"/files/{info.file_id}").status_code == 404
    with pytest.raises(errors.NotFoundError):
        list(first.chunks(info.file_id))
    assert httpx.get(info.url).status_code == 403  # (a signed URL past its expiry)


def test_an_unreachable_endpoint_stops_the_server_at_start_naming_it(
    s3_server: S3Server, tmp_path: Path,
) -> None:
    options = s3_options(s3_server, "any")
    options[options.index(s3_server.endpoint)] = "http://127.0.0.1:9"
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=options)
    with pytest.raises(AssertionError, match="server exited"):
        server.start()
    assert "the server cannot start: the S3 service at http://127.0.0.1:9" in server.log()
    assert s3_server.secret_key not in server.log()
    assert "Traceback" not in server.log()  # one sentence, not a stack


@pytest.mark.parametrize(("options", "says"), [
    (["--file-store", "s3"], "--file-store s3 needs --s3-bucket"),
    (["--file-store", "s3", "--s3-bucket", "b", "--s3-endpoint", "http://k:s@127.0.0.1:9"],
     "put no credentials in the URL"),
    (["--file-store", "s3", "--s3-bucket", "b", "--s3-endpoint", "127.0.0.1:9"],
     "give an http(s) URL"),
])
def test_bad_s3_options_are_refused_before_the_server_starts(
    options: list[str], says: str, tmp_path: Path,
) -> None:
    result = subprocess.run([FALRT, "server", "--data-dir", str(tmp_path), *options],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "k:s@" not in result.stderr


def test_a_runner_told_it_is_on_the_host_falls_back_to_grpc_with_an_s3_store(
    first: FilesClient,
) -> None:
    """The server refuses same-host transfers when its store is S3 (its bytes are not on
    this disk); a runner that tries them anyway (docs/files.md, "Runners on the server's
    host") moves the same bytes over gRPC, from then on."""
    data = b"by reference " * 1000
    stored = first.upload_bytes(data)
    with pytest.raises(errors.FailedPreconditionError, match="not on its host"):
        first.open_local(stored.file_id)
    connection = FilesConnection(lambda: first, local=True)
    payloads = PayloadFiles(connection=connection)
    assert asyncio.run(payloads.read(stored.file_id)) == data
    assert connection.local is False
    output = asyncio.run(payloads.store(data, "application/json"))
    assert first.read_bytes(output.file_id) == data
