"""Threads submitting with idempotency keys through crashes: what the crash tests share.

A Submit made while the server is down waits for it (`wait_for_ready`) and is made again;
each key is acknowledged with one request id, however often it is sent. `result` follows a
request with Watch until it has COMPLETED, across restarts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from falrt.client import connection
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

COMPLETED = common_pb2.REQUEST_STATUS_COMPLETED


class Submitter:
    def __init__(self, address: str, endpoint: str, marks: Path) -> None:
        self.channel = connection.channel(address)
        self.stub = queue_pb2_grpc.QueueStub(self.channel)
        self.endpoint, self.marks = endpoint, marks
        self.acked: dict[str, str] = {}  # key -> request id
        self.changed = threading.Condition()

    def input(self, key: str, n: int) -> dict[str, Any]:
        """The input of request `n` (a subclass may add to it)."""
        return {"key": key, "n": n, "marks": str(self.marks)}

    def refused(self, exc: grpc.RpcError) -> None:
        """A Submit failed with something other than UNAVAILABLE: raised, unless a subclass
        expects it (it returns, and the Submit is made again)."""
        raise exc

    def submit(self, n: int) -> None:
        key = f"k{n:03d}"
        data = json.dumps(self.input(key, n)).encode()
        request = queue_pb2.SubmitRequest(endpoint_id=self.endpoint, idempotency_key=key,
                                          input=common_pb2.Payload(data=data))
        while True:
            try:  # wait_for_ready: a call made while the server is down waits for it
                reply = self.stub.Submit(request, wait_for_ready=True, timeout=60)
                break
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    self.refused(exc)
        with self.changed:
            assert self.acked.setdefault(key, reply.request_id) == reply.request_id
            self.changed.notify_all()

    def wait_until(self, what: str, condition: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout=120), what

    def wait_acked(self, count: int) -> None:
        self.wait_until(f"{count} acknowledged", lambda: len(self.acked) >= count)

    def result(self, request_id: str) -> queue_pb2.RequestState:
        while True:
            try:
                for update in self.stub.Watch(queue_pb2.WatchRequest(request_id=request_id),
                                              wait_for_ready=True, timeout=120):
                    if update.state.status == COMPLETED:
                        return update.state
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise


def check_completed_once(
    submitter: Submitter, total: int, extra_runs: int, workers: int = 32,
) -> dict[str, queue_pb2.RequestState]:
    """What the crash tests promise, after the crashes: every one of `total` keys was
    acknowledged with one request id, each completed with its right answer, each ran, and at
    most `extra_runs` runs were repeats (attempts a crash cut). Returns the states by key."""
    assert sorted(submitter.acked) == [f"k{n:03d}" for n in range(total)]
    assert len(set(submitter.acked.values())) == total  # one request per key
    with ThreadPoolExecutor(workers) as pool:
        states = dict(zip(submitter.acked, pool.map(submitter.result,
                                                    submitter.acked.values()), strict=True))
    for key, state in states.items():
        assert not state.HasField("error"), (key, state.error)
        assert json.loads(state.output.data) == {"key": key, "double": int(key[1:]) * 2}
    runs: dict[str, int] = {}
    for mark in submitter.marks.iterdir():
        key = mark.name.split(".")[0]
        runs[key] = runs.get(key, 0) + 1
    assert set(runs) == set(submitter.acked)  # every request ran
    extra = sum(runs.values()) - total
    assert extra <= extra_runs, f"{extra} repeated executions, at most {extra_runs} expected"
    return states
