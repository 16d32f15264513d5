"""The file store end to end, on a real server (`--http-listen`, plain HTTP on loopback):
uploads and downloads over gRPC and HTTP with the same sha256 and bounded server memory,
an interrupted upload resumed from the server's offset, expiry, signed URLs, and bad input
answered with the right status while the server goes on serving.

`FALRT_TEST_FILE_MIB` sets the size of the large round trip (default 1024 MiB, the
acceptance figure: about 30 s here, most of it making and hashing the random bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest

from falrt import errors
from falrt.client import AsyncClient, SyncClient, credentials
from falrt.client.files import FilesClient, file_sha256
from falrt.v1 import files_pb2, files_pb2_grpc
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
LARGE_MIB = int(os.environ.get("FALRT_TEST_FILE_MIB", "1024"))
MAX_FILE_BYTES = 2 * 1024 * MIB
HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("files-server")
    proc = ServerProcess(root / "data", root / "server.log", extra=[
        "--http-listen", "127.0.0.1:0", "--max-file-bytes", str(MAX_FILE_BYTES)]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def files(client: SyncClient) -> FilesClient:
    return FilesClient(client._channel)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    base = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
    key = credentials.key_for(server.address)
    with httpx.Client(base_url=base, timeout=120,
                      headers={"authorization": f"Key {key}"}) as client:
        yield client


def random_file(path: Path, mib: int) -> str:
    """Writes `mib` MiB of random bytes to `path` (1 MiB at a time); their sha256."""
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            hasher.update(chunk)
            out.write(chunk)
    return hasher.hexdigest()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.Call)
    return call.code()


def test_a_large_file_round_trips_with_its_sha256_and_bounded_server_memory(
    server: ServerProcess, client: SyncClient, files: FilesClient, http: httpx.Client,
    tmp_path: Path,
) -> None:
    source = tmp_path / "large.bin"
    sha256 = random_file(source, LARGE_MIB)
    assert server.proc is not None
    pid = server.proc.pid
    before = rss_bytes(pid)
    started = time.monotonic()
    url = client.upload_file(source)
    upload_s = time.monotonic() - started
    after_upload = rss_bytes(pid)
    file_id = url.split("/files/")[1].split("?")[0]
    assert files.stat(file_id).sha256 == sha256

    started = time.monotonic()
    files.download(file_id, tmp_path / "by-grpc.bin")
    grpc_s = time.monotonic() - started
    assert file_sha256(tmp_path / "by-grpc.bin") == sha256
    (tmp_path / "by-grpc.bin").unlink()

    hasher, started = hashlib.sha256(), time.monotonic()
    with httpx.stream("GET", url, timeout=120) as response:  # the signed URL: no key
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == LARGE_MIB * MIB
        for chunk in response.iter_bytes(MIB):
            hasher.update(chunk)
    http_s = time.monotonic() - started
    assert hasher.hexdigest() == sha256
    after_downloads = rss_bytes(pid)

    started = time.monotonic()
    with source.open("rb") as body:  # (streamed by httpx: a file object with its length)
        response = http.put("/files/large.bin", content=body, headers={
            "content-length": str(LARGE_MIB * MIB), "x-falrt-sha256": sha256})
    http_upload_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == sha256
    peak = max(after_upload, after_downloads, rss_bytes(pid))
    print(f"\nfiles: {LARGE_MIB} MiB: gRPC upload {LARGE_MIB / upload_s:.0f} MiB/s, "
          f"gRPC download {LARGE_MIB / grpc_s:.0f} MiB/s, HTTP download "
          f"{LARGE_MIB / http_s:.0f} MiB/s, HTTP upload {LARGE_MIB / http_upload_s:.0f} MiB/s; "
          f"server RSS {before / MIB:.0f} MiB before, {after_upload / MIB:.0f} after the gRPC "
          f"upload, {after_downloads / MIB:.0f} after the downloads, {rss_bytes(pid) / MIB:.0f} "
          f"after the HTTP upload")
    assert peak - before < 100 * MIB, f"the server's RSS grew by {(peak - before) / MIB:.0f} MiB"
    files.delete(file_id)
    files.delete(response.json()["file_id"])


def test_an_interrupted_upload_resumes_from_the_servers_offset(
    files: FilesClient, tmp_path: Path,
) -> None:
    source = tmp_path / "resumed.bin"
    sha256 = random_file(source, 8)
    stub = files._stub
    info = stub.StartUpload(files_pb2.UploadHeader(name="resumed.bin", size=8 * MIB))
    hold = threading.Event()

    def first_part() -> Iterator[files_pb2.UploadRequest]:
        yield files_pb2.UploadRequest(resume=files_pb2.UploadResume(file_id=info.file_id))
        with source.open("rb") as data:
            for _ in range(3):
                yield files_pb2.UploadRequest(chunk=data.read(MIB))
        hold.wait(30)  # the connection "breaks" here: the call is cancelled

    call = stub.Upload.future(first_part())
    wait_for(lambda: files.status(info.file_id).received >= 2 * MIB, what="3 MiB written")
    call.cancel()
    hold.set()
    offset = files.status(info.file_id).received
    assert 0 < offset < 8 * MIB
    with pytest.raises(errors.FailedPreconditionError, match=f"offset {offset}"):
        files.resume(source, info.file_id, 0)
    done = files.resume(source, info.file_id, offset)
    assert (done.complete, done.sha256, done.size) == (True, sha256, 8 * MIB)
    assert done.url.startswith("http://")


def test_an_expired_file_is_not_found_and_its_url_refused(
    files: FilesClient, http: httpx.Client, tmp_path: Path,
) -> None:
    source = tmp_path / "short.txt"
    source.write_text("short-lived")
    info = files.upload(source, expires_in_s=1)
    assert http.get(f"/files/{info.file_id}").text == "short-lived"
    uploaded = time.monotonic()

    def expired() -> bool:
        try:
            files.stat(info.file_id)
        except errors.NotFoundError:
            return True
        return False

    wait_for(expired, timeout=10, what="the file expired")  # (wall-clock expiry: no event)
    assert time.monotonic() - uploaded >= 0.9  # not before its time
    with pytest.raises(errors.NotFoundError):
        list(files.chunks(info.file_id))
    assert http.get(f"/files/{info.file_id}").status_code == 404
    assert httpx.get(info.url).status_code == 403
    assert info.file_id not in {f.file_id for f in files.list()}


def test_a_signed_url_fetches_without_a_key_and_fails_when_altered(
    files: FilesClient, http: httpx.Client, tmp_path: Path,
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(b"hello, files")
    info = files.upload(source)
    response = httpx.get(info.url)
    assert (response.status_code, response.content) == (200, b"hello, files")
    assert response.headers["content-type"].startswith("text/plain")
    assert (response.headers["content-security-policy"],
            response.headers["x-content-type-options"]) == ("sandbox", "nosniff")
    ranged = httpx.get(info.url, headers={"range": "bytes=7-"})
    assert (ranged.status_code, ranged.content) == (206, b"files")
    assert ranged.headers["content-range"] == "bytes 7-11/12"
    base, _, query = info.url.partition("?")
    expires = int(query.split("expires=")[1].split("&")[0])
    signature = query.split("signature=")[1]
    other = files.upload(source)
    for altered in (
        f"{base}?expires={expires + 1}&signature={signature}",
        f"{base}?expires={expires}&signature={'0' * 64}",
        f"{base.replace(info.file_id, other.file_id)}?{query}",
    ):
        response = httpx.get(altered)
        assert response.status_code == 403, altered
        assert response.json()["error_type"] == "permission_denied"
    assert httpx.get(base).status_code == 401  # neither a signature nor a key
    assert http.get(f"/files/{info.file_id}").content == b"hello, files"  # a key, no URL


def test_an_http_upload_gives_a_url_and_honours_fals_lifecycle_header(
    http: httpx.Client, files: FilesClient,
) -> None:
    response = http.put("/files/note.txt", content=b"via http",
                        headers={"content-type": "text/plain",
                                 "x-fal-object-lifecycle-preference":
                                     '{"expiration_duration_seconds": 120}'})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["file_size"] == 8 and doc["sha256"] == hashlib.sha256(b"via http").hexdigest()
    assert 100 < doc["expires_at"] - time.time() <= 120
    assert httpx.get(doc["url"]).content == b"via http"
    assert files.stat(doc["file_id"]).name == "note.txt"
    bad = http.put("/files/x", content=b"x",
                   headers={"x-fal-object-lifecycle-preference": "forever"})
    assert bad.status_code == 400


def test_bad_input_gets_a_clear_status_and_the_server_goes_on(
    server: ServerProcess, files: FilesClient, http: httpx.Client, tmp_path: Path,
) -> None:
    stub: files_pb2_grpc.FilesStub = files._stub
    source = tmp_path / "ten.bin"
    source.write_bytes(b"0123456789")
    info = files.upload(source)
    cases: list[tuple[object, grpc.StatusCode]] = []
    for call, code in [
        (lambda: stub.Download(files_pb2.DownloadRequest(file_id=info.file_id, offset=-1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.Download(files_pb2.DownloadRequest(file_id=info.file_id, offset=11)),
         grpc.StatusCode.OUT_OF_RANGE),
        (lambda: stub.Download(files_pb2.DownloadRequest(file_id="0" * 32)),
         grpc.StatusCode.NOT_FOUND),
        (lambda: stub.Download(files_pb2.DownloadRequest(file_id="../etc/passwd")),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as failure:
            list(call())  # type: ignore[no-untyped-call]
        cases.append((failure.value, code))
    for request, code in [
        (files_pb2.UploadHeader(name="big", size=MAX_FILE_BYTES + 1),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        (files_pb2.UploadHeader(name="neg", size=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (files_pb2.UploadHeader(name="", size=1), grpc.StatusCode.INVALID_ARGUMENT),
        (files_pb2.UploadHeader(name="x", size=1, sha256="nothex"),
         grpc.StatusCode.INVALID_ARGUMENT),
        (files_pb2.UploadHeader(name="x", size=1, expires_in_s=-5),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as failure:
            stub.StartUpload(request)
        cases.append((failure.value, code))
    small = stub.StartUpload(files_pb2.UploadHeader(name="small", size=2))
    with pytest.raises(grpc.RpcError) as failure:
        stub.Upload(iter([
            files_pb2.UploadRequest(resume=files_pb2.UploadResume(file_id=small.file_id)),
            files_pb2.UploadRequest(chunk=b"too many bytes")]))
    cases.append((failure.value, grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(grpc.RpcError) as failure:
        stub.Upload(iter([files_pb2.UploadRequest(chunk=b"no header")]))
    cases.append((failure.value, grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(grpc.RpcError) as failure:  # no key
        files_pb2_grpc.FilesStub(grpc.insecure_channel(server.address)).List(
            files_pb2.ListRequest())
    cases.append((failure.value, grpc.StatusCode.UNAUTHENTICATED))
    assert [(code_of(e), code) for e, code in cases if code_of(e) != code] == []

    assert http.get(f"/files/{info.file_id}", headers={"range": "bytes=20-"}).status_code == 416
    assert http.get("/files/" + "0" * 32).status_code == 404
    assert _raw_put_status(http, MAX_FILE_BYTES + 1) == 413
    # Still serving: the file reads back whole.
    assert http.get(f"/files/{info.file_id}").content == b"0123456789"
    assert files.stat(info.file_id).complete


def _raw_put_status(http: httpx.Client, declared: int) -> int:
    """The status of a PUT that declares `declared` bytes and sends none (httpx would not)."""
    host, port = str(http.base_url.host), http.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"PUT /files/huge HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: {http.headers['authorization']}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode())
        head = sock.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def test_the_cli_uploads_lists_gets_and_removes_files(
    server: ServerProcess, tmp_path: Path,
) -> None:
    source = tmp_path / "cli.bin"
    sha256 = random_file(source, 9)  # (over the size that gets a progress bar)
    uploaded = json.loads(server.cli("files", "upload", str(source), "--expires-in", "1h",
                                     "--output", "json").stdout)
    assert (uploaded["size"], uploaded["sha256"], uploaded["complete"]) == (9 * MIB, sha256, True)
    assert 3500 < (datetime.fromisoformat(uploaded["expires_at"]) - datetime.now(UTC)
                   ).total_seconds() <= 3600
    people = server.cli("files", "upload", str(source))
    assert people.stdout.strip().startswith("http://") and "uploaded" in people.stderr
    listed = json.loads(server.cli("files", "list", "--output", "json").stdout)
    assert uploaded["file_id"] in {f["file_id"] for f in listed}
    assert uploaded["file_id"] in server.cli("files", "list").stdout
    target = tmp_path / "back.bin"
    got = json.loads(server.cli("files", "get", uploaded["file_id"], "-o", str(target),
                                "--output", "json").stdout)
    assert got["path"] == str(target) and file_sha256(target) == sha256
    assert json.loads(server.cli("files", "rm", uploaded["file_id"], "--output", "json").stdout
                      ) == {"deleted": [uploaded["file_id"]]}
    missing = server.cli("files", "get", uploaded["file_id"], check=False)
    assert missing.returncode != 0 and "no file" in missing.stderr
    bad = server.cli("files", "upload", str(source), "--expires-in", "soon", check=False)
    assert bad.returncode == 2 and "duration" in bad.stderr


def test_an_upload_goes_on_across_a_server_killed_and_restarted(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a fixed port: the client dials the same address again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           listen=f"127.0.0.1:{port}",
                           extra=["--http-listen", "127.0.0.1:0"]).start()
    source = tmp_path / "survivor.bin"
    sha256 = random_file(source, 256)
    files_dir = tmp_path / "data" / "files"
    restarted = threading.Event()

    def kill_midway() -> None:
        wait_for(lambda: any(p.stat().st_size >= 32 * MIB for p in files_dir.glob("*.part")),
                 what="32 MiB on disk")
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: no shutdown, the partial file as the disk has it
        server.proc.wait()
        server.start()
        restarted.set()

    killer = threading.Thread(target=kill_midway)
    try:
        with SyncClient(server.address) as client:
            killer.start()
            sent: list[int] = []
            info = FilesClient(client._channel).upload(source, progress=sent.append)
        killer.join()
        assert restarted.is_set()
        assert (info.complete, info.sha256, info.size) == (True, sha256, 256 * MIB)
        # Resumed: the bytes sent went back to the offset the restarted server had.
        assert any(later <= earlier for earlier, later in itertools.pairwise(sent))
    finally:
        killer.join(60)
        stop_cleanly(server)


def test_the_async_clients_upload_file_returns_a_url_that_fetches_the_file(
    server: ServerProcess, tmp_path: Path,
) -> None:
    source = tmp_path / "async.txt"
    source.write_text("from the async client")

    async def upload() -> str:
        async with AsyncClient(server.address) as client:
            return await client.upload_file(source, expires_in_s=60)

    url = asyncio.run(upload())
    assert httpx.get(url).text == "from the async client"


def test_upload_file_says_why_when_the_server_serves_no_http(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    source = tmp_path / "a.txt"
    source.write_text("a")
    try:
        with SyncClient(server.address) as client, \
                pytest.raises(errors.FailedPreconditionError, match="--http-listen"):
            client.upload_file(source)
    finally:
        stop_cleanly(server)
