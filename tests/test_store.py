"""The store contract, on SQLite (a real file) and on the in-memory implementation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from falrt.store.base import Store
from falrt.store.memory import MemoryStore
from falrt.store.records import (
    AppConfig,
    AppRecord,
    EndpointRecord,
    ErrorRecord,
    LogRecord,
    Outcome,
    Priority,
    RequestRecord,
    Revision,
    Status,
)
from falrt.store.sqlite import SQLiteStore

STORES: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp: SQLiteStore(tmp / "falrt.db"),
    "memory": lambda tmp: MemoryStore(),
}


def request(seq: int, app: str = "a") -> RequestRecord:
    return RequestRecord(request_id=f"id{seq}", app_name=app, path="/", input=b'{"x": 1}',
                         content_type="application/json", priority=Priority.NORMAL, seq=seq,
                         created_at=1.0)


def revision(rev: str, app: str = "a") -> Revision:
    return Revision(revision_id=rev, app_name=app, entrypoint="m:C", bundle_sha256="00",
                    env_key="", config=AppConfig(requirements=("six",), max_multiplexing=2),
                    endpoints=(EndpointRecord("/", "f", 1, "{}", "{}"),), message="m",
                    created_at=2.0)


@pytest.fixture(params=sorted(STORES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    return lambda: STORES[request.param](tmp_path)


def test_requests_move_through_their_statuses(make_store: Callable[[], Store]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await asyncio.gather(*(store.insert_request(request(s)) for s in range(1, 51)))
        await store.requeue("id1", 1)
        outcome = Outcome(error=ErrorRecord("runner_server_error", "boom", 13),
                          logs=(LogRecord(3.0, "line", "stdout"),))
        await store.complete("id2", outcome, 4.0)
        await store.requeue("id2", 2)  # a late write never reopens a completed request
        unfinished = await store.load_unfinished()
        assert [r.seq for r in unfinished] == [1, *range(3, 51)]
        assert unfinished[0].status is Status.IN_QUEUE and unfinished[0].attempts == 1
        done = await store.get_request("id2")
        assert done is not None and done.status is Status.COMPLETED and done.outcome == outcome
        assert await store.max_seq() == 50
        assert await store.get_request("nope") is None
        await store.close()

    asyncio.run(scenario())


def test_deploy_points_the_app_at_the_revision(make_store: Callable[[], Store]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await store.deploy(revision("r1"), AppRecord("a", "r1", 1.0, 1.0))
        await store.deploy(revision("r2"), AppRecord("a", "r2", 1.0, 2.0))
        assert [(a.name, a.revision_id) for a in await store.list_apps()] == [("a", "r2")]
        assert await store.get_revision("r1") == revision("r1")
        await store.insert_request(request(1))
        await store.delete_app("a")
        assert await store.list_apps() == []
        assert await store.get_request("id1") is None
        await store.close()

    asyncio.run(scenario())


def test_sqlite_keeps_what_it_acknowledged_across_reopen(tmp_path: Path) -> None:
    async def write() -> None:
        store = SQLiteStore(tmp_path / "falrt.db")
        await store.open()
        await store.insert_request(request(7))
        await store.close()

    async def read() -> list[RequestRecord]:
        store = SQLiteStore(tmp_path / "falrt.db")
        await store.open()
        try:
            return await store.load_unfinished()
        finally:
            await store.close()

    asyncio.run(write())
    assert [r.request_id for r in asyncio.run(read())] == ["id7"]
