"""The store contract, on SQLite (a real file), on PostgreSQL (a real server, a fresh database
per test) and on the in-memory implementation: the same cases run on each."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import msgspec
import pytest

from falrt.store.base import Store
from falrt.store.memory import MemoryStore
from falrt.store.postgres import PostgresStore
from falrt.store.records import (
    AppConfig,
    AppRecord,
    EndpointRecord,
    EnvironmentRecord,
    ErrorRecord,
    KeyRecord,
    LogRecord,
    Outcome,
    Priority,
    RequestRecord,
    Revision,
    SecretRecord,
    Status,
)
from falrt.store.sqlite import SQLiteStore
from tests.postgres import fresh_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

# Each store from the test's temporary directory and its fresh PostgreSQL database's DSN.
STORES: dict[str, Callable[[Path, str], Store]] = {
    "sqlite": lambda tmp, dsn: SQLiteStore(tmp / "falrt.db"),
    "memory": lambda tmp, dsn: MemoryStore(),
    "postgres": lambda tmp, dsn: PostgresStore(dsn),
}
DURABLE = ("postgres", "sqlite")


def request(seq: int, app: str = "a") -> RequestRecord:
    return RequestRecord(request_id=f"id{seq}", app_name=app, path="/", input=b'{"x": 1}',
                         content_type="application/json", priority=Priority.NORMAL, seq=seq,
                         created_at=1.0)


def revision(rev: str, app: str = "a") -> Revision:
    return Revision(revision_id=rev, app_name=app, entrypoint="m:C", bundle_sha256="00",
                    env_key="", config=AppConfig(requirements=("six",), max_multiplexing=2),
                    endpoints=(EndpointRecord("/", "f", 1, "{}", "{}"),), message="m",
                    created_at=2.0)


def _stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Each call makes a new store object on the same place (file or database)."""
    with ExitStack() as stack:
        dsn = stack.enter_context(fresh_database()) if request.param == "postgres" else ""
        yield lambda: STORES[request.param](tmp_path, dsn)


@pytest.fixture(params=sorted(STORES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    yield from _stores(request, tmp_path)


@pytest.fixture(params=DURABLE)
def make_durable_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Store]]:
    """Stores that keep what they acknowledged when closed (or killed) and reopened."""
    yield from _stores(request, tmp_path)


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


def test_deploy_keeps_the_apps_creation_time(make_store: Callable[[], Store]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await store.deploy(revision("r1"), AppRecord("a", "r1", 1.0, 1.0))
        await store.deploy(revision("r2"), AppRecord("a", "r2", 5.0, 5.0))
        assert await store.list_apps() == [AppRecord("a", "r2", 1.0, 5.0)]
        await store.close()
        await store.close()  # idempotent

    asyncio.run(scenario())


def test_delete_app_removes_its_revisions_and_requests_only(
    make_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await store.deploy(revision("ra", "a"), AppRecord("a", "ra", 1.0, 1.0))
        await store.deploy(revision("rb", "b"), AppRecord("b", "rb", 1.0, 1.0))
        await asyncio.gather(store.insert_request(request(1, "a")),
                             store.insert_request(request(2, "b")),
                             store.insert_request(request(3, "a")))
        await store.complete("id3", Outcome(output=b"{}"), 2.0)
        await store.delete_app("a")
        assert [a.name for a in await store.list_apps()] == ["b"]
        assert await store.get_revision("ra") is None
        assert await store.get_revision("rb") == revision("rb", "b")
        assert await store.get_request("id1") is None and await store.get_request("id3") is None
        assert [r.request_id for r in await store.load_unfinished()] == ["id2"]
        await store.close()

    asyncio.run(scenario())


def test_requeue_and_complete_of_an_unknown_request_change_nothing(
    make_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await store.requeue("ghost", 3)
        await store.complete("ghost", Outcome(output=b"x"), 1.0)
        assert await store.get_request("ghost") is None
        assert await store.load_unfinished() == []
        assert await store.max_seq() == 0
        await store.close()

    asyncio.run(scenario())


def test_durable_stores_keep_what_they_acknowledged_across_reopen(
    make_durable_store: Callable[[], Store],
) -> None:
    async def write() -> None:
        store = make_durable_store()
        await store.open()
        await store.insert_request(request(7))
        await store.insert_request(request(8))
        await store.requeue("id7", 2)
        await store.close()

    async def read() -> list[RequestRecord]:
        store = make_durable_store()
        await store.open()  # the schema exists already: opening again changes nothing
        try:
            return await store.load_unfinished()
        finally:
            await store.close()

    asyncio.run(write())
    assert [(r.request_id, r.attempts) for r in asyncio.run(read())] == [("id7", 2), ("id8", 0)]


def test_500_concurrent_inserts_are_all_durable_and_in_seq_order(
    make_durable_store: Callable[[], Store],
) -> None:
    seqs = list(range(1, 501))
    random.Random(7).shuffle(seqs)  # arrival order is not queue order

    async def write() -> None:
        store = make_durable_store()
        await store.open()
        await asyncio.gather(*(store.insert_request(request(s)) for s in seqs))
        await store.close()

    async def read() -> tuple[list[RequestRecord], int]:
        store = make_durable_store()
        await store.open()
        try:
            return await store.load_unfinished(), await store.max_seq()
        finally:
            await store.close()

    asyncio.run(write())
    unfinished, max_seq = asyncio.run(read())
    assert [r.seq for r in unfinished] == list(range(1, 501))
    assert [r.request_id for r in unfinished] == [f"id{s}" for s in range(1, 501)]
    assert unfinished[0] == request(1) and max_seq == 500


def test_a_completed_outcome_with_bytes_output_and_logs_round_trips(
    make_durable_store: Callable[[], Store],
) -> None:
    outcome = Outcome(output=bytes(range(256)) * 4, content_type="application/octet-stream",
                      inference_time_s=0.25,
                      logs=(LogRecord(1.5, "loading", "stdout"), LogRecord(1.75, "é\n", "stderr")))
    failed = Outcome(error=ErrorRecord("bad_request", "no", 3, (("x", "missing"),), "tb"))

    async def write() -> None:
        store = make_durable_store()
        await store.open()
        await asyncio.gather(*(store.insert_request(request(s)) for s in (1, 2, 3)))
        await asyncio.gather(store.complete("id1", outcome, 9.5),
                             store.complete("id2", failed, 9.75))
        await store.close()

    async def read() -> tuple[RequestRecord | None, RequestRecord | None, list[RequestRecord]]:
        store = make_durable_store()
        await store.open()
        try:
            return (await store.get_request("id1"), await store.get_request("id2"),
                    await store.load_unfinished())
        finally:
            await store.close()

    asyncio.run(write())
    done, error, unfinished = asyncio.run(read())
    assert done is not None and done.status is Status.COMPLETED
    assert done.outcome == outcome and done.completed_at == 9.5
    assert error is not None and error.outcome == failed
    assert [r.request_id for r in unfinished] == ["id3"]


def test_a_request_that_ended_before_it_was_stored_is_inserted_completed_in_one_write(
    make_durable_store: Callable[[], Store],
) -> None:
    outcome = Outcome(output=b'{"y": 2}', content_type="application/json",
                      logs=(LogRecord(1.5, "ran", "stdout"),))

    async def write() -> None:
        store = make_durable_store()
        await store.open()
        batches: list[int] = []
        store.on_batch = lambda size, seconds: batches.append(size)
        ended = request(1)
        ended.status, ended.attempts = Status.COMPLETED, 1
        ended.outcome, ended.completed_at = outcome, 9.5
        ended.webhook_url = "https://example.com/hook"
        await store.insert_request(ended)
        assert batches == [1]
        await store.insert_request(request(2))
        await store.close()

    async def read() -> tuple[RequestRecord | None, list[RequestRecord], list[RequestRecord]]:
        store = make_durable_store()
        await store.open()
        try:
            return (await store.get_request("id1"), await store.load_unfinished(),
                    await store.load_pending_webhooks())
        finally:
            await store.close()

    asyncio.run(write())
    done, unfinished, owed = asyncio.run(read())
    assert done is not None and done.status is Status.COMPLETED and done.attempts == 1
    assert done.outcome == outcome and done.completed_at == 9.5
    assert [r.request_id for r in unfinished] == ["id2"]
    assert [r.request_id for r in owed] == ["id1"] and owed[0].outcome == outcome


def test_a_failing_write_fails_alone_and_the_others_in_its_batch_land(
    make_durable_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_durable_store()
        await store.open()
        await store.insert_request(request(1))
        results = await asyncio.gather(
            *(store.insert_request(request(s)) for s in (2, 1, 3, 4)), return_exceptions=True
        )
        assert [isinstance(r, Exception) for r in results] == [False, True, False, False]
        assert [r.seq for r in await store.load_unfinished()] == [1, 2, 3, 4]
        await store.close()

    asyncio.run(scenario())


def test_postgres_commits_concurrent_writes_together() -> None:
    """Group commit: 500 concurrent inserts take far fewer than 500 transactions."""

    async def current_xid(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))
        finally:
            await conn.close()

    async def scenario(dsn: str) -> int:
        store = PostgresStore(dsn)
        await store.open()
        before = await current_xid(dsn)
        await asyncio.gather(*(store.insert_request(request(s)) for s in range(1, 501)))
        after = await current_xid(dsn)
        assert await store.max_seq() == 500
        await store.close()
        return after - before - 1  # each xid probe takes one itself

    with fresh_database() as dsn:
        transactions = asyncio.run(scenario(dsn))
    assert 1 <= transactions <= 50, f"{transactions} transactions for 500 inserts"


def test_a_request_is_found_by_its_idempotency_key(make_store: Callable[[], Store]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        keyed = msgspec.structs.replace(request(1), idempotency_key="caller:k1")
        await asyncio.gather(store.insert_request(keyed), store.insert_request(request(2)))
        assert await store.find_request_by_key("caller:k1") == "id1"
        assert await store.find_request_by_key("caller:k2") is None
        await store.close()

    asyncio.run(scenario())


def test_delete_completed_before_removes_only_old_results(
    make_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await asyncio.gather(*(store.insert_request(request(s)) for s in (1, 2, 3)))
        await asyncio.gather(store.complete("id1", Outcome(output=b"a"), 10.0),
                             store.complete("id2", Outcome(output=b"b"), 20.0))
        assert await store.delete_completed_before(15.0) == 1
        assert await store.get_request("id1") is None
        assert (await store.get_request("id2")) is not None
        assert [r.request_id for r in await store.load_unfinished()] == ["id3"]
        assert await store.delete_completed_before(15.0) == 0
        await store.close()

    asyncio.run(scenario())


def test_an_attempt_start_is_recorded_and_never_reopens_a_completed_request(
    make_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        await store.insert_request(request(1))
        await store.insert_request(request(2))
        await store.mark_started("id1", 3)
        await store.complete("id2", Outcome(output=b"{}"), 5.0)
        await store.mark_started("id2", 4)
        (unfinished,) = await store.load_unfinished()
        assert (unfinished.request_id, unfinished.status, unfinished.attempts) == (
            "id1", Status.IN_PROGRESS, 3)
        done = await store.get_request("id2")
        assert done is not None and done.status is Status.COMPLETED
        await store.close()

    asyncio.run(scenario())


def test_a_webhook_is_owed_from_completion_until_it_is_done(
    make_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        hooked = request(1)
        hooked.webhook_url = "http://127.0.0.1:9/hook"
        await store.insert_request(hooked)
        await store.insert_request(request(2))
        assert await store.load_pending_webhooks() == []  # owed only once completed
        for request_id in ("id1", "id2"):
            await store.complete(request_id, Outcome(output=b'{"ok": true}'), 5.0)
        (owed,) = await store.load_pending_webhooks()
        assert (owed.request_id, owed.webhook_url) == ("id1", "http://127.0.0.1:9/hook")
        assert owed.outcome is not None and owed.outcome.output == b'{"ok": true}'
        await store.webhook_done("id1")
        assert await store.load_pending_webhooks() == []
        await store.close()

    asyncio.run(scenario())


def test_scale_overrides_are_kept_and_a_deploy_replaces_them(
    make_durable_store: Callable[[], Store],
) -> None:
    async def scenario() -> None:
        store = make_durable_store()
        await store.open()
        await store.deploy(revision("r1"), AppRecord("a", "r1", 1.0, 1.0))
        scale = AppConfig(min_concurrency=3, keep_alive_s=300.0, machine_types=("M",))
        await store.set_scale("a", scale)
        await store.set_scale("nope", scale)  # an unknown app: nothing happens
        await store.close()
        store = make_durable_store()  # reopened: the overrides survived
        await store.open()
        assert [a.scale for a in await store.list_apps()] == [scale]
        kept = AppConfig(keep_alive_s=300.0)
        await store.deploy(revision("r2"), AppRecord("a", "r2", 1.0, 2.0, kept))
        assert [(a.revision_id, a.scale) for a in await store.list_apps()] == [("r2", kept)]
        await store.close()

    asyncio.run(scenario())


def test_environments_secrets_and_keys_are_kept(make_store: Callable[[], Store]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.open()
        staging = EnvironmentRecord("staging", "pre-production", 1.0)
        assert await store.create_environment(staging)
        assert not await store.create_environment(EnvironmentRecord("staging", "again", 2.0))
        assert await store.list_environments() == [staging]

        await store.put_secrets([SecretRecord("staging", "B", b"enc-b", 1.0, 1.0),
                                 SecretRecord("staging", "A", b"enc-a", 1.0, 1.0),
                                 SecretRecord("main", "A", b"enc-main", 1.0, 1.0)])
        await store.put_secrets([SecretRecord("staging", "A", b"enc-a2", 5.0, 5.0)])
        secrets = await store.list_secrets("staging")
        assert [(s.name, s.value, s.created_at, s.updated_at) for s in secrets] == [
            ("A", b"enc-a2", 1.0, 5.0), ("B", b"enc-b", 1.0, 1.0)]
        assert await store.delete_secret("staging", "B")
        assert not await store.delete_secret("staging", "B")
        await store.delete_environment("staging")
        assert await store.list_environments() == []
        assert await store.list_secrets("staging") == []
        assert [s.value for s in await store.list_secrets("main")] == [b"enc-main"]

        key = KeyRecord("k1", "ab" * 32, "ADMIN", "local", "first", 1.0)
        await store.create_key(key)
        await store.create_key(KeyRecord("k2", "cd" * 32, "API", "other", "", 2.0))
        assert await store.get_key("k1") == key
        assert await store.revoke_key("k1", 3.0)
        assert await store.revoke_key("k1", 4.0)  # revoking again keeps the first time
        assert not await store.revoke_key("nope", 4.0)
        assert [(k.key_id, k.revoked_at) for k in await store.list_keys()] == [
            ("k1", 3.0), ("k2", None)]
        await store.close()

    asyncio.run(scenario())


def test_a_durable_store_reports_each_committed_batch_with_its_size_and_time(
    make_durable_store: Callable[[], Store],
) -> None:
    """What falrt_store_batch_size and falrt_store_write_seconds observe (`on_batch`; SQLite
    calls it on its writer thread)."""
    async def scenario() -> None:
        store = make_durable_store()
        await store.open()
        batches: list[tuple[int, float]] = []
        store.on_batch = lambda size, seconds: batches.append((size, seconds))
        await asyncio.gather(*(store.insert_request(request(s)) for s in range(1, 201)))
        await store.close()
        assert sum(size for size, _ in batches) == 200
        assert all(seconds >= 0 for _, seconds in batches)

    asyncio.run(scenario())
