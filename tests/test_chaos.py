"""Chaos: the crash test again, with the disk filling up midway and runners producing output
larger than a message may carry.

300 requests flow in from 32 threads while the server is SIGKILLed twice and, in its second
life, its disk (a tmpfs) fills up until the server refuses new requests, then is freed.
One request in 15 is bad: it answers 70 MiB (over the 64 MiB limit, with payloads by
reference off) or prints a 70 MB line without a newline. What must hold:

- 0 acknowledged requests lost: every one completes;
- every failing request fails with its own cause: the oversized ones with
  `payload_too_large`, and nothing else fails; a Submit refused for the full store is
  `store_full` and is not acknowledged (the client submits it again, with its idempotency
  key, once the health service says SERVING);
- 0 runners killed by another request's data: each server life starts its 2 runners and no
  runner exits on its own;
- a request runs again only when a crash cut its attempt.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from falrt import errors
from tests.disk import NOT_SERVING, SERVING, fill, health, tmpfs
from tests.harness import ServerProcess, wait_for
from tests.submitter import Submitter as Resubmitter

pytestmark = pytest.mark.e2e

TOTAL = 300
WORKERS = 32
RUNNERS = 2  # the app's max_concurrency; keep_alive outlasts the test
SLOTS = RUNNERS * 8  # x max_multiplexing: the attempts one crash can cut


def kind_of(n: int) -> str:
    return {7: "huge_output", 22: "huge_line"}.get(n % 30, "small")


class Submitter(Resubmitter):
    """A Submit refused because the store is full waits for SERVING, then is made again;
    request n waits until the test allows it (its pace)."""

    def __init__(self, address: str, endpoint: str, marks: Path) -> None:
        super().__init__(address, endpoint, marks)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.store_full = 0  # Submits refused because the store was full
        self.allowed = 0  # requests 0 .. allowed-1 may be submitted

    def allow(self, count: int) -> None:
        with self.changed:
            self.allowed = count
            self.changed.notify_all()

    def input(self, key: str, n: int) -> dict[str, Any]:
        return {**super().input(key, n), "kind": kind_of(n)}

    def submit(self, n: int) -> None:
        self.wait_until(f"request {n} allowed", lambda: n < self.allowed)
        super().submit(n)

    def refused(self, exc: grpc.RpcError) -> None:
        assert isinstance(errors.from_rpc_error(exc), errors.StoreFullError), exc
        with self.changed:
            self.store_full += 1
            self.changed.notify_all()
        self.wait_serving()

    def wait_serving(self) -> None:
        """Follows the health service until it says SERVING (across server restarts)."""
        while True:
            try:
                for update in self.health.Watch(health_pb2.HealthCheckRequest(service=""),
                                                wait_for_ready=True, timeout=120):
                    if update.status == SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise


def test_crashes_a_full_disk_and_oversized_outputs_lose_nothing_and_fail_only_their_own(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with tmpfs(tmp_path / "disk", 64) as disk:
        listen = "127.0.0.1:0"  # the first server's port; its restarts take the port it got
        logs: list[Path] = []

        def server(name: str) -> ServerProcess:
            logs.append(tmp_path / f"{name}.log")
            # (payloads by reference off: the 64 MiB message limit is what this test hits)
            return ServerProcess(disk / "data", logs[-1], listen=listen,
                                 extra=["--retry-backoff", "0.05",
                                        "--payload-ref-bytes", "0"]).start()

        live = server("first")
        listen = live.address
        endpoint = live.deploy("tests/apps/chaos.py::Chaos")
        submitter = Submitter(listen, endpoint, marks)
        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                futures = [pool.submit(submitter.submit, n) for n in range(TOTAL)]
                submitter.allow(100)
                submitter.wait_acked(60)
                live.kill()
                live = server("second")
                submitter.wait_acked(100)
                filler = fill(disk)  # the server learns it at its next write
                submitter.allow(TOTAL)
                submitter.wait_until("submits refused", lambda: submitter.store_full >= 10)
                assert health(listen) == NOT_SERVING
                filler.unlink()
                wait_for(lambda: health(listen) == SERVING, what="SERVING once freed")
                submitter.wait_acked(240)
                live.kill()
                live = server("third")
                for future in futures:
                    future.result()

            assert sorted(submitter.acked) == [f"k{n:03d}" for n in range(TOTAL)]
            assert len(set(submitter.acked.values())) == TOTAL  # one request per key
            with ThreadPoolExecutor(WORKERS) as pool:
                states = dict(zip(submitter.acked, pool.map(submitter.result,
                                                            submitter.acked.values()),
                                  strict=True))
        finally:
            submitter.channel.close()
            live.stop()

    for key, state in states.items():
        n = int(key[1:])
        if kind_of(n) == "huge_output":
            assert state.error.error_type == "payload_too_large", (key, state.error)
            assert "67043328" in state.error.message.replace(",", ""), state.error.message
            continue
        assert not state.HasField("error"), (key, state.error)
        output = json.loads(state.output.data)
        assert (output["key"], output["double"]) == (key, n * 2)
    runs: dict[str, int] = {}
    pids: set[str] = set()
    for mark in marks.iterdir():
        key, pid, _ = mark.name.split(".")
        runs[key] = runs.get(key, 0) + 1
        pids.add(pid)
    assert set(runs) == set(submitter.acked)  # every request ran
    extra = sum(runs.values()) - TOTAL
    assert extra <= 2 * SLOTS, f"{extra} repeated executions for 2 crashes"
    assert len(pids) <= 3 * RUNNERS, f"{len(pids)} runners for 3 server lives"
    exits = [line for log in logs for line in log.read_text().splitlines() if " exited: " in line]
    assert exits == [], exits  # no runner ended on its own
    assert submitter.store_full >= 10
