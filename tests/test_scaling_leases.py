"""Scaling leases and runner slots on one PostgreSQL database (docs/stores.md, "Scaling
across servers"): two `PostgresStore` objects joined under different server ids stand for
two servers on one real database (a fresh one per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.postgres import fresh_database
from tests.test_shared_store import joined

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as fresh:
        yield fresh


def test_one_server_at_a_time_holds_an_app_and_a_dead_holder_is_replaced(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1", lease_s=0.4) as s1, joined(dsn, "s2") as s2:
            first, second = await asyncio.gather(
                s1.hold_apps(["app"], 0.3, []), s2.hold_apps(["app"], 0.3, []))
            assert len(first) + len(second) == 1  # one of the two holds it
            holder, other = (s1, s2) if first else (s2, s1)
            assert set(await holder.hold_apps(["app", "b"], 0.3, [])) == {"app", "b"}
            assert await other.hold_apps(["app"], 0.3, []) == {}
            # The holder stops renewing (as if killed): the other takes the app within the
            # app lease (0.3 s), plus this loop's polling.
            started = time.monotonic()
            while not await other.hold_apps(["app"], 0.3, []):
                assert time.monotonic() - started < 5, "the lease was never taken over"
                await asyncio.sleep(0.02)
            assert time.monotonic() - started <= 0.3 + 0.1
            assert await holder.hold_apps(["app"], 0.3, []) == {}  # the other's now
            for store in (s1, s2):  # (what `falrt apps get` shows as its scaling lead)
                lead = await store.scaling_lead("app")
                assert lead is not None and lead[0] == other.server_id
            assert await s1.scaling_lead("never-held") is None

    asyncio.run(main())


def test_a_clean_stop_frees_its_leases_and_slots_at_once(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s2") as s2:
            async with joined(dsn, "s1") as s1:
                assert set(await s1.hold_apps(["app"], 30, [])) == {"app"}
                assert await s1.take_runner_slot("app", "r1", 1)
                assert not await s2.take_runner_slot("app", "r2", 1)
                await s1.leave()
            assert set(await s2.hold_apps(["app"], 30, [])) == {"app"}
            assert await s2.take_runner_slot("app", "r2", 1)

    asyncio.run(main())


def test_runner_slots_hold_max_concurrency_across_servers(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1") as s1, joined(dsn, "s2") as s2:
            taken = await asyncio.gather(
                *(s1.take_runner_slot("app", f"a{n}", 4) for n in range(10)),
                *(s2.take_runner_slot("app", f"b{n}", 4) for n in range(10)))
            assert sum(taken) == 4
            mine = [f"a{n}" for n in range(10) if taken[n]]
            # The lead sees the other server's slots, and that it waits for one (at least
            # 6 of its 10 takes were refused).
            held = await s1.hold_apps(["app"], 30, mine)
            assert held == {"app": (4 - len(mine), 1)}
            for runner_id in [f"a{n}" for n in range(10)] + [f"b{n}" for n in range(10)]:
                await s1.free_runner_slot(runner_id)
            assert await s2.take_runner_slot("app", "b-next", 4)
            assert await s2.take_runner_slot("app", "extra", None)  # a rolling candidate

    asyncio.run(main())


def test_the_slots_of_a_server_whose_lease_expired_stop_counting(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1", lease_s=0.3) as s1, joined(dsn, "s2") as s2:
            assert await s1.take_runner_slot("app", "r1", 1)
            assert not await s2.take_runner_slot("app", "r2", 1)
            started = time.monotonic()
            while not await s2.take_runner_slot("app", "r2", 1):
                assert time.monotonic() - started < 5, "the slot never came free"
                await asyncio.sleep(0.02)

    asyncio.run(main())


def test_a_slot_whose_give_back_was_lost_is_freed_by_the_next_renewal(dsn: str) -> None:
    async def main() -> None:
        async with joined(dsn, "s1") as s1, joined(dsn, "s2") as s2:
            assert await s1.take_runner_slot("app", "gone", 1)
            await s1.hold_apps(["app"], 30, ["gone"])  # still its runner: kept
            assert not await s2.take_runner_slot("app", "r2", 1)
            await s1.hold_apps(["app"], 0.0, [])  # no such runner, older than the lease
            assert await s2.take_runner_slot("app", "r2", 1)

    asyncio.run(main())
