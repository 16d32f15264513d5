"""Several real servers on one PostgreSQL database share one queue.

Each test starts two `falrt server --store postgresql://...` processes with their own data
directories (the second installs the apps the first deploys from the database). A request
runs on one server's runner at a time and completes once; any server shows its position,
follows it to the end and cancels it; a server that dies has its requests taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from falrt.client import Completed, InProgress, Queued, SyncClient, credentials
from falrt.client.control import ControlClient
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.postgres import fresh_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LEASE_S = 1.5
TALLY = "tests/apps/tally.py::Tally"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one fresh database, both up."""
    with server_pair(tmp_path, LEASE_S) as servers:
        yield servers


@contextlib.contextmanager
def server_pair(tmp_path: Path, lease_s: float) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one fresh database with a lease of `lease_s`, both up and sharing the
    admin key; stopped (and checked) at the end."""
    with fresh_database() as dsn:
        servers = [
            ServerProcess(tmp_path / name, tmp_path / f"{name}.log", store=dsn,
                          extra=["--lease", str(lease_s)])
            for name in ("a", "b")
        ]
        try:
            for server in servers:
                server.start()
            share_admin_key(*servers)
            yield servers[0], servers[1]
        finally:  # a server the test killed, or that stopped itself, is not checked
            stop_cleanly(*[server for server in servers if server.is_running()])


def share_admin_key(first: ServerProcess, second: ServerProcess) -> None:
    """Records the admin key `first` made for `second` too: they share one store, but the
    second found keys there and wrote none, and a key is sent only to a server it is
    recorded for."""
    key = credentials.key_for(first.address)
    assert key is not None
    credentials.save(second.address, key)


def app_names(server: ServerProcess) -> list[str]:
    with ControlClient(server.address) as control:
        return [app.name for app in control.list_apps()]


def deploy_on(first: ServerProcess, second: ServerProcess, target: str) -> str:
    """Deploys on `first`; returns once `second` serves the app too."""
    endpoint = first.deploy(target)
    name = endpoint.partition("/")[2]
    wait_for(lambda: name in app_names(second), what=f"{name} on the second server")
    return endpoint


def running_on(server: ServerProcess) -> set[str]:
    """Ids of the requests this server's runners are running."""
    with ControlClient(server.address) as control:
        return {i for r in control.list_runners() for i in r.in_flight_request_ids}


def runner_ids(server: ServerProcess) -> set[str]:
    with ControlClient(server.address) as control:
        return {r.runner_id for r in control.list_runners()}


def warm_up(client: SyncClient, endpoint: str, marks: Path) -> None:
    """Starts a runner on this client's server: a direct call runs only on the server it
    reaches (which starts a runner for it, within the app's max_concurrency across the
    servers), so the requests submitted next go straight to that runner."""
    client.run(endpoint, {"key": "warm-up", "n": 0, "marks": str(marks), "seconds": 0})
    (marks / next(p.name for p in marks.iterdir() if p.name.startswith("warm-up."))).unlink()


def fetch_value(dsn: str, query: str) -> object:
    async def fetch() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def marks_per_key(marks: Path) -> Counter[str]:
    return Counter(path.name.partition(".")[0] for path in marks.iterdir())


def test_two_servers_share_one_queue_and_run_each_request_once(
    pair: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = pair
    endpoint = deploy_on(a, b, TALLY)
    marks = tmp_path / "marks"
    marks.mkdir()
    total = 60
    # max_concurrency holds for the app across the servers: 2 lets each server run one
    # runner, started by a direct call through it.
    a.cli("apps", "scale", "tally", "--max-concurrency", "2")
    with SyncClient(a.address) as on_a, SyncClient(b.address) as on_b:
        warm_up(on_a, endpoint, marks)
        warm_up(on_b, endpoint, marks)

        def one(n: int) -> tuple[int, Completed]:
            submit_to, watch_on = (on_a, on_b) if n % 2 else (on_b, on_a)
            arguments = {"key": f"k{n:02d}", "n": n, "marks": str(marks), "seconds": 0.3}
            request_id = submit_to.submit(endpoint, arguments).request_id
            return n, watch_on.wait(request_id, timeout=120)  # followed on the other server

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(total)))
    for n, done in results:
        assert done.error is None, done.error
        assert (done.output["key"], done.output["double"]) == (f"k{n:02d}", 2 * n)
    assert marks_per_key(marks) == Counter({f"k{n:02d}": 1 for n in range(total)})
    ran_on = {done.output["runner"] for _, done in results}
    assert ran_on & runner_ids(a), "the first server's runner took no request"
    assert ran_on & runner_ids(b), "the second server's runner took no request"


def test_any_server_shows_positions_follows_and_cancels_requests_another_runs(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    endpoint = deploy_on(a, b, "tests/apps/waiter.py::Waiter")
    a.cli("apps", "scale", "waiter", "--max-concurrency", "2")  # (across the servers)
    with SyncClient(a.address) as on_a, SyncClient(b.address) as on_b:
        for client in (on_a, on_b):  # a direct call starts a runner where it arrives
            client.run(endpoint, {"text": "warm-up"}, path="/async", timeout=60)
        # 4 slots per server: 8 requests that wait until cancelled fill both runners.
        waiting = [on_a.submit(endpoint, {"text": f"w{n}", "wait": True}, path="/async")
                   .request_id for n in range(8)]
        wait_for(lambda: len(running_on(a)) == 4 and len(running_on(b)) == 4,
                 timeout=60, what="both runners full")
        first = on_b.submit(endpoint, {"text": "first"}, path="/async").request_id
        second = on_a.submit(endpoint, {"text": "second"}, path="/async").request_id
        for client in (on_a, on_b):  # one queue: the same positions on every server
            wait_for(lambda c=client: c.status(first) == Queued(position=0)
                     and c.status(second) == Queued(position=1), what="positions")
        with ControlClient(a.address) as control:
            assert control.queue_size("waiter") == 2

        assert on_a.cancel(first) == "CANCELLATION_REQUESTED"  # submitted to b, queued
        cancelled = on_b.wait(first, timeout=30)
        assert cancelled.error is not None and cancelled.error.error_type == "client_cancelled"
        wait_for(lambda: on_b.status(second) == Queued(position=0), what="second moves up")

        # A request one server runs is cancelled through the other; its slot goes to the
        # queued request, and the runner keeps serving.
        victim = sorted(running_on(a))[0]
        assert isinstance(on_b.status(victim), InProgress)
        assert on_b.cancel(victim) == "CANCELLATION_REQUESTED"
        done = on_b.wait(victim, timeout=30)
        assert done.error is not None and done.error.error_type == "client_cancelled"
        assert on_b.wait(second, timeout=30).output["text"] == "second"
        for request_id in waiting:
            on_b.cancel(request_id)
        for request_id in waiting:
            assert on_a.wait(request_id, timeout=30).error is not None


def test_a_server_that_dies_has_its_requests_taken_over(
    pair: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = pair
    endpoint = deploy_on(a, b, TALLY)
    marks = tmp_path / "marks"
    marks.mkdir()
    total = 16
    with SyncClient(a.address) as on_a:
        warm_up(on_a, endpoint, marks)
        ids = {on_a.submit(endpoint, {"key": f"k{n:02d}", "n": n, "marks": str(marks),
                                      "seconds": 2.0}).request_id: n for n in range(total)}
        # Both servers' runners take from the one queue: what the first runs when it is
        # killed is what this test is about.
        held = wait_for(lambda: running_on(a) & set(ids), timeout=60,
                        what="requests running on the first server")
    a.kill()  # its runner dies with it; the attempts it ran were cut
    with SyncClient(b.address) as on_b:
        for request_id, n in ids.items():
            done = on_b.wait(request_id, timeout=120)
            assert done.error is None, done.error
            assert done.output["double"] == 2 * n
            if request_id in held:  # taken over and run again by the second server
                assert done.output["runner"] in runner_ids(b)
    counts = marks_per_key(marks)
    assert set(counts) == {f"k{n:02d}" for n in range(total)}  # none lost
    twice = {key for key, count in counts.items() if count > 1}
    assert all(count <= 2 for count in counts.values())
    # Only an attempt the kill cut may have left a side effect before it ran again.
    assert twice <= {f"k{ids[i]:02d}" for i in held}
    assert "took over" in b.log()


def test_a_server_that_lost_its_lease_stops_and_its_late_results_do_not_count(
    pair: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    """SIGSTOP a server past its lease: the other takes over; when it wakes up, the
    results its runners finished meanwhile do not complete a request a second time, and
    it stops itself."""
    a, b = pair
    endpoint = deploy_on(a, b, TALLY)
    marks = tmp_path / "marks"
    marks.mkdir()
    with SyncClient(a.address) as on_a:
        warm_up(on_a, endpoint, marks)
        ids = [on_a.submit(endpoint, {"key": f"k{n}", "n": n, "marks": str(marks),
                                      "seconds": 3.0}).request_id for n in range(4)]
        # Both servers' runners take requests from the one queue; what the first holds
        # when it is paused is what this test is about.
        held = wait_for(lambda: running_on(a) & set(ids), timeout=60,
                        what="requests running on the first server")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        with SyncClient(b.address) as on_b:
            outputs = [on_b.wait(i, timeout=60).output for i in ids]
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert [o["double"] for o in outputs] == [0, 2, 4, 6]
    ran_on_b = runner_ids(b)
    for request_id, output in zip(ids, outputs, strict=True):
        if request_id in held:  # cut by the pause, run again by the other server
            assert output["runner"] in ran_on_b
    assert a.proc.wait(timeout=60) == 0  # it stopped itself, gracefully
    assert "lease expired" in a.log()
    with SyncClient(b.address) as on_b:
        after = [on_b.wait(i, timeout=10).output for i in ids]
    assert after == outputs  # the late results of the stopped server changed nothing
    records = json.loads(b.cli("apps", "list", "--output", "json").stdout)
    assert [r["name"] for r in records] == ["tally"]


def test_a_server_that_missed_events_catches_up_when_it_hears_again(
    pair: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    """The connections that carry events are cut (as by a database failover): the servers
    reconnect and catch up with what they missed."""
    a, b = pair
    endpoint = deploy_on(a, b, TALLY)
    marks = tmp_path / "marks"
    marks.mkdir()
    # Only this test's database: other tests' servers share the PostgreSQL server.
    cut = fetch_value(a.store, "SELECT count(pg_terminate_backend(pid)) FROM "
                               "pg_stat_activity WHERE application_name = 'falrt-events' "
                               "AND datname = current_database()")
    assert cut == 2
    with SyncClient(a.address) as on_a, SyncClient(b.address) as on_b:
        ids = [on_a.submit(endpoint, {"key": f"k{n}", "n": n, "marks": str(marks),
                                      "seconds": 0.2}).request_id for n in range(12)]
        for n, request_id in enumerate(ids):  # followed on the server that missed events
            assert on_b.wait(request_id, timeout=60).output["double"] == 2 * n
    wait_for(lambda: "hearing the other servers again" in b.log(), what="b reconnected")
    assert marks_per_key(marks) == Counter({f"k{n}": 1 for n in range(12)})
