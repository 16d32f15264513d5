"""gRPC calls driven by h2load, a C HTTP/2 load generator, and the CPU their servers spend.

A Python client's own cost per call (0.1-0.3 ms of this machine's CPU) hides what a server
spends, and it competes with the servers for the two cores; h2load sends the same bytes
for a fraction of that. A gRPC unary call is one HTTP/2 POST: headers `content-type:
application/grpc` and `te: trailers`, a body of the 5-byte gRPC frame prefix and the
serialized request; a server-streaming call (`Queue.Subscribe`) is the same POST whose
answer carries several frames. Call metadata (the API key) is one more header.

h2load counts HTTP statuses, but a failed gRPC call still answers HTTP 200 (its
`grpc-status` is in the trailers), so each run is checked twice: the response bytes h2load
received per call must be at least 95% of what a correct answer holds (an error answer
holds no DATA at all), and a real gRPC client checks an answer before and after (`verify`).

Each h2load run uses `-c N -m 1`: N connections with one call in flight each, like N
callers. CPU is read from /proc (user + system time of each serving process, threads
included) before and after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import statistics
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
DATA_SHARE = 0.95  # of a correct answer's bytes that each call must have received


def grpc_frame(message: bytes) -> bytes:
    """The body of a unary gRPC request: uncompressed flag, big-endian length, message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def h2load_binary() -> str:
    """The h2load binary (scripts/h2load.sh installs Debian's nghttp2-client if needed)."""
    out = subprocess.run([str(REPO / "scripts" / "h2load.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class Target:
    """One gRPC method to load: where, with what, served by which processes."""

    name: str
    url: str  # http://HOST:PORT/package.Service/Method
    body: bytes  # grpc_frame(serialized request)
    headers: tuple[str, ...]  # "name: value", the gRPC ones included
    pids: Callable[[], dict[str, list[int]]]  # role ("server", "runner") -> its processes
    # A real client's call: raises when its answer is wrong, else returns the DATA bytes
    # that a correct answer holds at least (for Subscribe: its COMPLETED update's frame).
    verify: Callable[[], Awaitable[int]]
    answer_bytes: int = 0  # what `verify` returned (`checked` fills it in)

    async def checked(self) -> Target:
        """This target with `answer_bytes` from a real client's verified call."""
        return dataclasses.replace(self, answer_bytes=await self.verify())


@dataclass
class Run:
    """What one or more h2load runs of one target at one concurrency measured."""

    latencies_us: list[int] = field(default_factory=list)
    ok: int = 0
    elapsed_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)

    def add(self, other: Run) -> None:
        self.latencies_us += other.latencies_us
        self.ok += other.ok
        self.elapsed_s += other.elapsed_s
        for role, seconds in other.cpu_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seconds

    def as_json(self) -> dict[str, Any]:
        """p50/p99 (ms), requests per second, CPU ms per call by role and in all."""
        cuts = statistics.quantiles(self.latencies_us, n=100, method="inclusive")
        cpu = {role: round(s / self.ok * 1e3, 4) for role, s in sorted(self.cpu_s.items())}
        return {
            "p50_ms": round(statistics.median(self.latencies_us) / 1e3, 3),
            "p99_ms": round(cuts[98] / 1e3, 3),
            "rps": round(self.ok / self.elapsed_s, 1),
            "calls": self.ok,
            "cpu_ms_per_call": {**cpu, "total": round(sum(cpu.values()), 4)},
        }


class LoadFailed(RuntimeError):
    """h2load saw failures, or the answers were too short to be correct ones."""


async def drive(binary: str, target: Target, concurrency: int, requests: int) -> Run:
    """One h2load run of `requests` calls at `concurrency`; raises LoadFailed unless every
    call answered with a full answer."""
    with tempfile.TemporaryDirectory(prefix="falrt-h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log.tsv"
        body.write_bytes(target.body)
        headers = [arg for header in target.headers for arg in ("-H", header)]
        argv = [binary, "-n", str(requests), "-c", str(concurrency), "-m", "1", "-t", "1",
                "-d", str(body), "--log-file", str(log), *headers, target.url]
        before = cpu_seconds(target.pids())
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = (await proc.communicate())[0].decode(errors="replace")
        after = cpu_seconds(target.pids())
        run = _parse(out, log, target, requests)
    run.cpu_s = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
    return run


def _parse(out: str, log: Path, target: Target, requests: int) -> Run:
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    data = re.search(r"\((\d+)\) data", out)
    if done is None or finished is None or data is None:
        raise LoadFailed(f"{target.name}: h2load printed no summary:\n{out[-2000:]}")
    ok, failed = int(done.group(1)), sum(int(g) for g in done.groups()[1:])
    if failed or ok != requests:
        raise LoadFailed(f"{target.name}: {ok} of {requests} calls succeeded:\n{out[-2000:]}")
    if int(data.group(1)) < DATA_SHARE * target.answer_bytes * ok:
        raise LoadFailed(f"{target.name}: {int(data.group(1)) / ok:.1f} bytes per answer, "
                         f"a correct one has {target.answer_bytes}: some calls failed")
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    latencies = [int(line.split("\t")[2]) for line in log.read_text().splitlines()
                 if line.split("\t")[1] == "200"]
    return Run(latencies_us=latencies, ok=ok, elapsed_s=elapsed)


# -- processes and their CPU ----------------------------------------------------------------


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per role, summed over its processes' threads (gone ones count 0; the
    servers' threads live as long as they do)."""
    return {role: sum(_process_cpu_s(pid) for pid in group) for role, group in pids.items()}


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of the live threads of `pid`, in nanoseconds from each thread's
    schedstat (its stat's clock ticks are 10 ms coarse: a 1 s run would be ±2%)."""
    total_ns = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def listening_pid(port: int) -> int:
    """The process listening on TCP `port` of 127.0.0.1 (or any address), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    for pid in _pids():
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    raise RuntimeError(f"no process listens on port {port}")


def runner_pids(server_pid: int) -> list[int]:
    """The runner (shim) processes a `falrt server` started (its children running the
    shim)."""
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            if int(stat[1]) == server_pid and b"falrt.shim" in Path(
                    f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _pids() -> Iterable[int]:
    return (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
