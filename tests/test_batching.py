"""Dynamic batching on a real server and runner: concurrent requests, from the queue and the
direct path, reach the handler together; one failing item fails alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

import falrt
from falrt import errors
from falrt.client import SyncClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e


def test_concurrent_requests_are_batched_and_scattered_back(server: ServerProcess) -> None:
    endpoint = server.deploy("tests/apps/batcher.py::Batcher")
    with SyncClient(server.address) as client:
        client.run(endpoint, {"x": 0})  # a runner is up: the next requests arrive together

        def queued(x: int) -> dict[str, int]:
            return client.subscribe(endpoint, {"x": x})  # type: ignore[no-any-return]

        def direct(x: int) -> dict[str, int]:
            return client.run(endpoint, {"x": x})  # type: ignore[no-any-return]

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(queued if x % 2 else direct, x) for x in range(1, 17)]
            outputs = [f.result() for f in futures]
    assert [o["doubled"] for o in outputs] == [2 * x for x in range(1, 17)]
    assert max(o["batch_size"] for o in outputs) > 1  # they shared handler calls
    assert all(o["batch_size"] <= 8 for o in outputs)  # never above max_batch_size
    by_batch: dict[int, int] = {}
    for output in outputs:
        by_batch[output["batch"]] = by_batch.get(output["batch"], 0) + 1
    assert len(by_batch) < 16  # fewer handler calls than requests


def test_a_full_batch_goes_at_once_and_a_lone_request_after_the_maximum_wait(
    server: ServerProcess,
) -> None:
    """max_batch_size 8, max_batch_wait_ms 100 (tests/apps/batcher.py)."""
    endpoint = server.deploy("tests/apps/batcher.py::Batcher")
    with SyncClient(server.address) as client:
        client.run(endpoint, {"x": 0})
        barrier = threading.Barrier(8)

        def together(x: int) -> dict[str, int]:
            barrier.wait()  # the 8 calls leave within a few ms of each other
            return client.run(endpoint, {"x": x})  # type: ignore[no-any-return]

        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(together, range(100, 108)))
        assert [o["doubled"] for o in outputs] == [2 * x for x in range(100, 108)]
        assert {(o["batch_size"], o["batch"]) for o in outputs} == {(8, outputs[0]["batch"])}

        started = time.monotonic()
        alone = client.run(endpoint, {"x": 7})
        took = time.monotonic() - started
    assert (alone["doubled"], alone["batch_size"]) == (14, 1)
    assert 0.1 <= took < 2.0  # it waited for company the full 100 ms, then went alone


def test_a_failing_item_fails_alone(server: ServerProcess) -> None:
    endpoint = server.deploy("tests/apps/batcher.py::Batcher")
    with SyncClient(server.address) as client:
        client.run(endpoint, {"x": 0})
        with ThreadPoolExecutor(4) as pool:
            good = [pool.submit(client.run, endpoint, {"x": x}) for x in (1, 2, 3)]
            bad = pool.submit(client.run, endpoint, {"x": 4, "fail": True})
            outputs = [f.result() for f in good]
            with pytest.raises(errors.RunnerServerError, match="item 4 is refused"):
                bad.result()
    assert [o["doubled"] for o in outputs] == [2, 4, 6]


class In(msgspec.Struct):
    x: int


def test_a_batched_endpoint_takes_and_returns_lists() -> None:
    with pytest.raises(TypeError, match=r"must take list\[Input\] and return list\[Output\]"):
        class Wrong(falrt.App):
            @falrt.endpoint("/", max_batch_size=4)
            def run(self, item: In) -> In:
                return item

    with pytest.raises(ValueError, match="max_batch_size"):
        falrt.endpoint("/", max_batch_size=-1)
