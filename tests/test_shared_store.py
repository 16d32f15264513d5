"""The PostgreSQL store shared by several servers: claims, fencing, leases, events.

Two `PostgresStore` objects joined under different server ids stand for two servers on one
real database (a fresh one per test).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from falrt.server.queue.scheduler import Scheduler
from falrt.store.postgres import PostgresStore
from falrt.store.records import ClusterEvent, Outcome, Priority, RequestRecord, Status
from tests.postgres import fresh_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as fresh:
        yield fresh


def request(n: int) -> RequestRecord:
    return RequestRecord(request_id=f"id{n}", app_name="a", path="/", input=b"{}",
                         content_type="application/json", priority=Priority.NORMAL, seq=n,
                         created_at=1.0)


@asynccontextmanager
async def joined(dsn: str, server_id: str, lease_s: float = 30.0) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(dsn)
    await store.open()
    await store.join(server_id, lease_s)
    try:
        yield store
    finally:
        await store.close()


def test_two_servers_claiming_the_same_requests_get_each_once(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1") as s1, joined(dsn, "s2") as s2:
            await asyncio.gather(*(s1.insert_request(request(n)) for n in range(200)))
            ids = [f"id{n}" for n in range(200)]
            first, second = await asyncio.gather(
                asyncio.gather(*(s1.claim(i, 1) for i in ids)),
                asyncio.gather(*(s2.claim(i, 1) for i in reversed(ids))),
            )
            won = dict(zip(ids, first, strict=True))
            for request_id, claimed in zip(reversed(ids), second, strict=True):
                assert won[request_id] != claimed, request_id  # exactly one of the two
            # (How many each took depends on timing: the two batches, claiming in opposite
            # orders, may deadlock; PostgreSQL then fails one, whose claims are committed one
            # by one after the other's, so one server may take all. Either way each request
            # has exactly one holder, as checked above and below.)
            held = {r.request_id: r.owner for r in await s1.load_unfinished()}
            assert held == {i: ("s1" if won[i] else "s2") for i in ids}

    asyncio.run(main())


def test_only_the_holder_completes_or_requeues_a_request(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1") as s1, joined(dsn, "s2") as s2:
            await s1.insert_request(request(1))
            await s1.insert_request(request(2))
            assert await s1.claim("id1", 1)
            outcome = Outcome(output=b"2")
            assert not await s2.complete_owned("id1", outcome, 5.0)  # s1 holds it
            await s2.requeue("id1", 1)  # ignored: s2 does not hold it
            stored = await s2.get_request("id1")
            assert stored is not None
            assert (stored.status, stored.owner) == (Status.IN_PROGRESS, "s1")
            assert await s1.complete_owned("id1", outcome, 5.0)
            assert not await s1.complete_owned("id1", Outcome(output=b"3"), 6.0)  # once
            assert not await s2.claim("id1", 2)
            # A queued request may be completed by any server (a cancel), once.
            assert not await s2.complete_owned("id2", outcome, 7.0)  # nobody ran it
            assert await s2.complete_owned("id2", outcome, 7.0, queued=True)
            assert not await s1.claim("id2", 1)
            done = await s1.get_request("id2")
            assert done is not None and done.status is Status.COMPLETED

    asyncio.run(main())


def test_a_server_whose_lease_expired_is_taken_over_and_fenced(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1", lease_s=0.3) as s1, joined(dsn, "s2") as s2:
            for n in range(3):
                await s1.insert_request(request(n))
            assert await s1.claim("id0", 1)
            assert await s1.claim("id1", 10)  # its last attempt
            await s1.requeue("id1", 10)
            assert await s1.claim("id1", 10)

            def give_up(record: RequestRecord) -> Outcome | None:
                return Scheduler.gives_up(record.attempts, no_retry=record.no_retry)

            deadline = time.monotonic() + 10
            while not (taken := await s2.take_over(give_up))[0]:
                assert time.monotonic() < deadline, "the lease never expired"
                await asyncio.sleep(0.05)
            queued, completed, owed = taken
            assert (queued, completed, owed) == (["id0"], ["id1"], [])
            gave_up = await s2.get_request("id1")
            assert gave_up is not None and gave_up.outcome is not None
            assert gave_up.outcome.error is not None
            assert gave_up.outcome.error.error_type == "runner_disconnected"
            assert not await s1.renew(0.3)  # s1 learns it lost its lease
            assert not await s1.complete_owned("id0", Outcome(output=b"late"), 9.0)
            assert await s2.claim("id0", 2)
            assert await s2.claim("id2", 1)  # never claimed: it stayed queued

    asyncio.run(main())


def test_other_servers_hear_what_changed_in_commit_order(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1") as s1, joined(dsn, "s2") as s2:
            heard: asyncio.Queue[ClusterEvent] = asyncio.Queue()
            listener = await s2.listen(heard.put_nowait, lambda: None)
            own = await s1.listen(heard.put_nowait, lambda: None)  # s1 does not hear itself
            try:
                await s1.insert_request(request(1))
                await s1.claim("id1", 1)
                await s1.complete_owned("id1", Outcome(output=b"1"), 2.0)
                await s2.insert_request(request(2))
                events = [await asyncio.wait_for(heard.get(), 10) for _ in range(4)]
            finally:
                await listener.close()
                await own.close()
            assert [(e.kind, e.sender, e.request_id) for e in events] == [
                ("queued", "s1", "id1"), ("claimed", "s1", "id1"), ("completed", "s1", "id1"),
                ("queued", "s2", "id2"),
            ]
            assert events[1].attempts == 1

    asyncio.run(main())
