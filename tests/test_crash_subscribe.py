"""Crash test of Subscribe: SIGKILL the server while 300 requests flow in through Subscribe.

A Subscribe's request that ends within a few milliseconds is written once, completed, and
only then acknowledged (falrt/server/queue/recorder.py); a longer one is inserted first. Half
the requests here end at once, half take 50 ms. Every request whose Subscribe got its first
message (the acknowledgement: the request is durable) must complete exactly once with the
right output after the restart; one whose Subscribe was cut before that is subscribed again
with its idempotency key. Handler executions are counted as in tests/test_crash.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from falrt.v1 import common_pb2, queue_pb2
from tests.harness import ServerProcess
from tests.submitter import Submitter, check_completed_once

pytestmark = pytest.mark.e2e

TOTAL = 300
WORKERS = 32
SLOTS = 16  # runners (max_concurrency 2) x max_multiplexing 8: attempts a crash can cut


class Subscriber(Submitter):
    """Makes each request with Subscribe; acknowledged by its first message."""

    def input(self, key: str, n: int) -> dict[str, Any]:
        return super().input(key, n) | {"sleep_s": 0.0 if n % 2 else 0.05}

    def submit(self, n: int) -> None:
        key = f"k{n:03d}"
        data = json.dumps(self.input(key, n)).encode()
        request = queue_pb2.SubscribeRequest(submit=queue_pb2.SubmitRequest(
            endpoint_id=self.endpoint, idempotency_key=key,
            input=common_pb2.Payload(data=data)))
        while True:
            updates = self.stub.Subscribe(request, wait_for_ready=True, timeout=60)
            try:
                first = next(updates)
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                continue
            updates.cancel()  # (the request goes on: only Cancel ends a queued request)
            break
        with self.changed:
            request_id = first.state.request_id
            assert self.acked.setdefault(key, request_id) == request_id
            self.changed.notify_all()


def test_a_crash_loses_no_subscribed_request_and_completes_none_twice(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    live = ServerProcess(tmp_path / "data", tmp_path / "first.log",
                         extra=["--retry-backoff", "0.05"]).start()
    listen = live.address
    endpoint = live.deploy("tests/apps/ledger.py::Ledger")
    subscriber = Subscriber(listen, endpoint, marks)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(subscriber.submit, n) for n in range(TOTAL)]
        subscriber.wait_acked(120)
        live.kill()
        live = ServerProcess(tmp_path / "data", tmp_path / "second.log", listen=listen,
                             extra=["--retry-backoff", "0.05"]).start()
        for future in futures:
            future.result()
    try:
        check_completed_once(subscriber, TOTAL, SLOTS, WORKERS)  # 1 crash
    finally:
        subscriber.channel.close()
        live.stop()
