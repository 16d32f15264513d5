"""The file store's throughput beside `cp`, and the server's memory while it moves files.

    python bench/files.py [--quick] [--out bench/files.json]

Starts a `falrt server --http-listen 127.0.0.1:0` (its own data directory under a temporary
folder on the same disk as the files), then for each size (1 MiB, 64 MiB, 1 GiB; `--quick`:
the first two) writes a file of random bytes and times, on that disk:
- `cp` of the file and an fsync of the copy (the store fsyncs a file when it completes);
- a gRPC upload (`FilesClient.upload`: chunks of 1 MiB, sha256 checked) and download (to a
  file, sha256 checked);
- an HTTP `PUT /files/NAME` (streamed from the file) and a `GET` of the signed URL (hashed,
  not written);
the median of 3 rounds (1 GiB: one), and the server's RSS (VmRSS from /proc) after them.
Then two requests through the queue, each beside a `cp` of the same bytes (`--payload-mib`,
100 MiB):
- the issue's case, a request whose input and output are files (bench/apps/file_app.py): a
  `falrt.File` input given by the URL of an uploaded file (the upload timed apart) and a
  new `falrt.File` output; the time from `submit` to the response with the output's URL,
  and with the caller's download of the output added;
- a request whose input and output are 100 MiB of JSON (bench/apps/echo_app.py answers its
  input): `submit` to the decoded result (both payloads travel by file reference:
  docs/files.md, "Payloads by reference");
and the server's peak RSS meanwhile (VmHWM): medians of 5 rounds after one uncounted, and
under "best" the fastest round of each (on a machine shared with other work, `cp` itself
varies tenfold between rounds). The runner is a process runner on this host, so it moves
files through the server's local store (docs/files.md, "Runners on the server's host").
Prints one JSON document (MiB/s, the ratio of each to `cp`, RSS in MiB, the load average at
the end). Ratios, not absolute figures, compare across machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from servers import machine

from falrt.client import SyncClient, credentials
from falrt.client.files import FilesClient

MIB = 1024 * 1024
SIZES_MIB = (1, 64, 1024)
HTTP = re.compile(r"falrt http listening on (\S+)")
GRPC = re.compile(r"falrt server listening on (\S+)")


@contextmanager
def server(root: Path) -> Iterator[tuple[int, str, str]]:
    """A falrt server: (its pid, its gRPC address, its HTTP base URL)."""
    argv = [str(Path(sys.executable).parent / "falrt"), "server", "--listen", "127.0.0.1:0",
            "--data-dir", str(root / "data"), "--http-listen", "127.0.0.1:0",
            "--max-file-bytes", str(2 * 1024 * MIB)]
    with (root / "server.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        http = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := HTTP.search(line):
                http = "http://" + match.group(1)
            if match := GRPC.search(line):
                yield proc.pid, match.group(1), http
                return
        raise RuntimeError(f"the server did not start; see {root / 'server.log'}")
    finally:
        proc.terminate()
        proc.wait(30)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def random_file(path: Path, mib: int) -> None:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))


def timed(work: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def cp(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb") as copy:
        os.fsync(copy.fileno())


def measure(mib: int, root: Path, pid: int, files: FilesClient, http: httpx.Client,
            key: str) -> dict[str, Any]:
    """Each path's time for a file of `mib` MiB beside `cp`'s: the median of 3 rounds
    (1 GiB: one round)."""
    source = root / f"{mib}.bin"
    random_file(source, mib)
    rounds = [one_round(source, mib, root, files, http, key) for _ in range(1 if mib >= 1024
                                                                            else 3)]
    rss_up = rss_mib(pid)
    source.unlink()
    figures = {name: median([r[name] for r in rounds]) for name in rounds[0]}
    cp_s = figures["cp"]
    return {
        "mib": mib, "rounds": len(rounds),
        "mib_per_s": {name: round(mib / s, 1) for name, s in figures.items()},
        "x_cp": {name: round(s / cp_s, 2) for name, s in figures.items() if name != "cp"},
        "rss_mib": {"after_transfers": round(rss_up, 1)},
    }


def one_round(source: Path, mib: int, root: Path, files: FilesClient, http: httpx.Client,
              key: str) -> dict[str, float]:
    cp_s, _ = timed(lambda: cp(source, root / "copy.bin"))
    (root / "copy.bin").unlink()
    up_s, info = timed(lambda: files.upload(source))
    down_s, _ = timed(lambda: files.download(info.file_id, root / "back.bin"))
    (root / "back.bin").unlink()

    def put() -> dict[str, Any]:
        with source.open("rb") as body:
            response = http.put(f"/files/{source.name}", content=body, headers={
                "content-length": str(mib * MIB), "authorization": f"Key {key}"})
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    put_s, doc = timed(put)

    def get() -> str:
        hasher = hashlib.sha256()
        with http.stream("GET", doc["url"]) as response:
            for chunk in response.iter_bytes(MIB):
                hasher.update(chunk)
        return hasher.hexdigest()

    get_s, digest = timed(get)
    assert digest == info.sha256 == doc["sha256"]
    files.delete(info.file_id)
    files.delete(doc["file_id"])
    return {"cp": cp_s, "grpc_upload": up_s, "grpc_download": down_s, "http_upload": put_s,
            "http_download": get_s}


def deploy(address: str, target: str) -> str:
    deployed = subprocess.run(
        [str(Path(sys.executable).parent / "falrt"), "deploy", target],
        env={**os.environ, "FALRT_HOST": address}, capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parent.parent)
    return deployed.stdout.split()[-1]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def delete_all(files: FilesClient) -> None:
    """Deletes the files of the last round (its payloads by reference too), as `cp`'s copy
    is deleted: on this VM, memory the guest never touched costs about 10 ms per MiB on
    first use (bench/RESULTS.md), so every round writes into recycled page cache, not only
    `cp`."""
    for info in files.list():
        files.delete(info.file_id)


def measure_request(
    mib: int, root: Path, pid: int, client: SyncClient, address: str, rounds: int = 5,
) -> dict[str, Any]:
    """Submit to result of a request whose input and output are `mib` MiB of JSON (payloads
    by reference), beside `cp` of the same bytes (the encoded input); medians of `rounds`
    after one uncounted round, each `cp` just before its request."""
    endpoint = deploy(address, "bench/apps/echo_app.py::Echo")
    client.subscribe(endpoint, {"text": "warm"})  # (starts the runner)
    text = "0123456789abcdef" * (mib * MIB // 16 - 1)  # (+ the JSON around it: about mib)
    source = root / "payload.json"
    source.write_bytes(json.dumps({"text": text}).encode())
    files = FilesClient(client._channel)
    cp_times, request_times = [], []
    before = rss_mib(pid)
    for _ in range(rounds + 1):
        cp_times.append(timed(lambda: cp(source, root / "copy.json"))[0])
        (root / "copy.json").unlink()
        seconds, output = timed(lambda: client.submit(endpoint, {"text": text}).get())
        assert output == {"text": text}
        request_times.append(seconds)
        delete_all(files)
    source.unlink()
    cp_s, request_s = median(cp_times[1:]), median(request_times[1:])
    return {
        "mib": mib, "rounds": rounds, "cp_s": round(cp_s, 3),
        "submit_to_result_s": round(request_s, 3), "x_cp": round(request_s / cp_s, 2),
        "best": best({"cp": cp_times[1:], "submit_to_result": request_times[1:]}),
        "server_rss_mib": {"before": round(before, 1), "peak": round(hwm_mib(pid), 1)},
    }


def best(times: dict[str, list[float]]) -> dict[str, float]:
    """The fastest round of each (what each costs when the shared machine let it run
    undisturbed) and their ratios to the fastest `cp`."""
    fastest = {name: min(values) for name, values in times.items()}
    figures = {f"{name}_s": round(s, 3) for name, s in fastest.items()}
    return figures | {f"{name}_x_cp": round(s / fastest["cp"], 2)
                      for name, s in fastest.items() if name != "cp"}


def measure_file_request(
    mib: int, root: Path, pid: int, client: SyncClient, address: str, rounds: int = 5,
) -> dict[str, Any]:
    """The issue's case: a request whose input and output are `mib` MiB files
    (bench/apps/file_app.py: a `falrt.File` input given by the URL of an uploaded file,
    a new `falrt.File` output with the same bytes). Per round, on a file of fresh bytes
    (so no runner cache helps): `cp` (+ fsync) of the file, its upload (reported apart),
    submit to the response with the output's URL, and the caller's download of the
    output after it; medians of `rounds` after one uncounted round."""
    endpoint = deploy(address, "bench/apps/file_app.py::FileEcho")
    files = FilesClient(client._channel)
    source = root / "input.bin"
    random_file(source, mib)
    warm = files.upload(source)
    client.subscribe(endpoint, {"file": warm.url})  # (starts the runner)
    times: dict[str, list[float]] = {"cp": [], "upload": [], "request": [], "download": []}
    before = rss_mib(pid)
    for round_ in range(rounds + 1):  # (the first round warms up: not counted)
        with source.open("r+b") as out:  # (fresh bytes: another sha256, another file)
            out.write(os.urandom(64) + round_.to_bytes(8, "big"))
        times["cp"].append(timed(lambda: cp(source, root / "copy.bin"))[0])
        (root / "copy.bin").unlink()
        seconds, info = timed(lambda: files.upload(source))
        times["upload"].append(seconds)
        url = info.url
        seconds, output = timed(lambda: client.submit(endpoint, {"file": url}).get())  # noqa: B023
        times["request"].append(seconds)
        output_id: str = output["file"]["url"].split("/files/")[1].split("?")[0]
        seconds, back = timed(lambda: files.download(output_id, root / "back.bin"))  # noqa: B023
        times["download"].append(seconds)
        assert back.sha256 == info.sha256 and back.size == mib * MIB
        (root / "back.bin").unlink()
        delete_all(files)
    source.unlink()
    times = {name: values[1:] for name, values in times.items()}
    cp_s = median(times["cp"])
    request_s, download_s = median(times["request"]), median(times["download"])
    with_download = median([r + d for r, d in zip(times["request"], times["download"],
                                                  strict=True)])
    return {
        "mib": mib, "rounds": rounds, "cp_s": round(cp_s, 3),
        "upload_s": round(median(times["upload"]), 3),
        "submit_to_result_s": round(request_s, 3), "x_cp": round(request_s / cp_s, 2),
        "download_s": round(download_s, 3),
        "submit_to_result_and_download_s": round(with_download, 3),
        "with_download_x_cp": round(with_download / cp_s, 2),
        "best": best({"cp": times["cp"], "submit_to_result": times["request"],
                      "submit_to_result_and_download": [
                          r + d for r, d in zip(times["request"], times["download"],
                                                strict=True)]}),
        "server_rss_mib": {"before": round(before, 1), "peak": round(hwm_mib(pid), 1)},
    }


def hwm_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 MiB and 64 MiB only")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--payload-mib", type=int, default=100,
                        help="the size of the request's input and output (MiB)")
    parser.add_argument("--request-only", action="store_true",
                        help="only the request through the queue")
    args = parser.parse_args()
    sizes = () if args.request_only else SIZES_MIB[:2] if args.quick else SIZES_MIB
    with tempfile.TemporaryDirectory(prefix="falrt-bench-files-") as tmp:
        root = Path(tmp)
        with server(root) as (pid, address, base):
            key = credentials.key_for(address) or ""
            before = rss_mib(pid)
            with SyncClient(address) as client, httpx.Client(base_url=base, timeout=600) as http:
                files = FilesClient(client._channel)
                rows = [measure(mib, root, pid, files, http, key) for mib in sizes]
                file_request = measure_file_request(args.payload_mib, root, pid, client,
                                                    address)
                request = measure_request(args.payload_mib, root, pid, client, address)
    result = {"bench": "files", "machine": machine(), "load_average": os.getloadavg(),
              "server_rss_mib_before": round(before, 1),
              "sizes": rows, "request_with_files": file_request,
              "request_by_reference": request}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
