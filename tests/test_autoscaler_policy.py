"""The scaling rule as a table: context -> decision. No clock is patched: `now` is data."""

from __future__ import annotations

import asyncio

import pytest

from falrt.autoscaler.policy import (
    FRESH_REAP_S,
    RunnerView,
    ScalingContext,
    ScalingDecision,
    ScalingSettings,
    decide,
)
from falrt.server.fleet.leases import AppLease, ScalingLeases

pytestmark = pytest.mark.unit

BASE = ScalingSettings(min_concurrency=0, max_concurrency=4, concurrency_buffer=0,
                       concurrency_buffer_perc=0, keep_alive_s=60, scaling_delay_s=0,
                       max_multiplexing=1)


def settings(**changes: float) -> ScalingSettings:
    return ScalingSettings(**{**BASE.__dict__, **changes})  # type: ignore[arg-type]


def idle(runner_id: str, since: float, served: int = 1) -> RunnerView:
    return RunnerView(runner_id, alive=True, in_flight=0, idle_since=since, served=served)


def busy(runner_id: str, in_flight: int = 1) -> RunnerView:
    return RunnerView(runner_id, alive=True, in_flight=in_flight, idle_since=None, served=1)


CASES = [
    ("no traffic, no runners: nothing", settings(), [], [], ScalingDecision(0)),
    ("one queued request starts one runner", settings(), [100.0], [], ScalingDecision(1, start=1)),
    ("burst is capped by max_concurrency", settings(), [100.0] * 9, [],
     ScalingDecision(4, start=4)),
    ("multiplexing divides demand", settings(max_multiplexing=4), [100.0] * 9, [],
     ScalingDecision(3, start=3)),
    ("min_concurrency keeps runners without traffic", settings(min_concurrency=2), [], [],
     ScalingDecision(2, start=2)),
    ("buffer adds warm runners on top of demand", settings(concurrency_buffer=1), [100.0], [],
     ScalingDecision(2, start=2)),
    ("percentage buffer wins when larger", settings(concurrency_buffer=1,
     concurrency_buffer_perc=200), [100.0] * 2, [], ScalingDecision(4, start=4)),
    ("a starting runner counts as capacity", settings(), [100.0],
     [RunnerView("r1", alive=True, in_flight=0, idle_since=None, served=0)],
     ScalingDecision(1)),
    ("idle runner within keep_alive stays", settings(), [], [idle("r1", since=50.0)],
     ScalingDecision(0, next_check_s=10.0)),
    ("idle runner past keep_alive stops", settings(), [], [idle("r1", since=30.0)],
     ScalingDecision(0, stop=("r1",))),
    ("busy runner never stops", settings(), [], [busy("r1")], ScalingDecision(1)),
    ("fresh runner that never served is reaped after 10 s", settings(), [],
     [idle("r1", since=100.0 - FRESH_REAP_S, served=0)], ScalingDecision(0, stop=("r1",))),
    ("no fresh reap when a minimum is set", settings(min_concurrency=1), [],
     [idle("r1", since=0.0, served=0)], ScalingDecision(1)),
    ("longest idle stops first", settings(), [], [idle("r1", since=20.0), idle("r2", since=10.0),
     busy("r3")], ScalingDecision(1, stop=("r2", "r1"))),
    ("scaling_delay holds young requests back", settings(scaling_delay_s=5), [98.0], [],
     ScalingDecision(0, next_check_s=3.0)),
    ("scaling_delay passed: start", settings(scaling_delay_s=5), [94.0], [],
     ScalingDecision(1, start=1)),
    # Interactions.
    ("a buffer above the minimum wins with no traffic",
     settings(min_concurrency=1, concurrency_buffer=2), [], [], ScalingDecision(2, start=2)),
    ("max_concurrency caps minimum plus buffer", settings(min_concurrency=1,
     concurrency_buffer=6), [], [], ScalingDecision(4, start=4)),
    ("max_concurrency caps a minimum above it", settings(min_concurrency=6), [], [],
     ScalingDecision(4, start=4)),
    ("max_concurrency 0 starts nothing", settings(max_concurrency=0), [100.0] * 3, [],
     ScalingDecision(0)),
    ("percentage buffer rounds up", settings(max_concurrency=10, concurrency_buffer_perc=50),
     [100.0] * 3, [], ScalingDecision(5, start=5)),
    ("in-flight requests are demand, divided by multiplexing", settings(max_multiplexing=2),
     [100.0] * 2, [busy("r1", in_flight=2)], ScalingDecision(2, start=1)),
    ("no fresh reap when a buffer is set", settings(concurrency_buffer=1), [],
     [idle("r1", since=0.0, served=0)], ScalingDecision(1)),
    ("a minimum keeps runners past keep_alive; the surplus stops, longest idle first",
     settings(min_concurrency=1), [], [idle("r1", since=10.0), idle("r2", since=5.0)],
     ScalingDecision(1, stop=("r2",))),
    ("keep_alive 0 stops an idle runner at once", settings(keep_alive_s=0), [],
     [idle("r1", since=100.0)], ScalingDecision(0, stop=("r1",))),
    ("a runner that is not alive (draining) is not capacity", settings(), [100.0],
     [RunnerView("r1", alive=False, in_flight=1, idle_since=None, served=3)],
     ScalingDecision(1, start=1)),
    ("scaling_delay with multiplexing: only requests old enough count",
     settings(scaling_delay_s=5, max_multiplexing=2), [90.0, 91.0, 92.0, 99.0], [],
     ScalingDecision(2, start=2, next_check_s=4.0)),
]


@pytest.mark.parametrize(("name", "scaling", "queued", "runners", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_scaling_rule(name: str, scaling: ScalingSettings, queued: list[float],
                      runners: list[RunnerView], expected: ScalingDecision) -> None:
    delay = scaling.scaling_delay_s
    young = [t for t in queued if t > 100.0 - delay]
    ctx = ScalingContext(settings=scaling, now=100.0, queued_ready=len(queued) - len(young),
                         runners=tuple(runners),
                         next_ready_s=min(young) + delay - 100.0 if young else None)
    assert decide(ctx) == expected


def test_crash_backoff_defers_starts_until_it_ends() -> None:
    ctx = ScalingContext(settings=BASE, now=100.0, queued_ready=1, runners=(),
                         backoff_until=130.0)
    assert decide(ctx) == ScalingDecision(1, start=0, next_check_s=30.0)


# Several servers on one store (docs/stores.md, "Scaling across servers"): (name, settings,
# queued_ready, runners, lead, remote_alive, remote_waiting, expected).
SHARED_CASES = [
    ("the lead counts the other servers' runners toward max_concurrency", settings(), 9, [],
     True, 3, 0, ScalingDecision(1, start=1)),
    ("the lead starts nothing when the others hold every slot", settings(), 9, [], True, 4, 0,
     ScalingDecision(0)),
    ("min_concurrency holds for the app as a whole", settings(min_concurrency=2), 0, [],
     True, 1, 0, ScalingDecision(1, start=1)),
    ("the lead's surplus counts the others' runners; it stops only its own",
     settings(min_concurrency=1), 0, [idle("r1", since=10.0)], True, 1, 0,
     ScalingDecision(0, stop=("r1",))),
    ("another server waits: the lead's idle runner stops at once, whatever keep_alive",
     settings(min_concurrency=4), 0,
     [idle("r1", since=99.0), idle("r2", since=90.0), busy("r3"), busy("r4")], True, 0, 1,
     ScalingDecision(3, stop=("r2",))),
    ("another server waits while every lead runner is busy: the least busy drains",
     settings(min_concurrency=4, max_multiplexing=2), 4,
     [busy("r1", 2), busy("r2", 1), busy("r3", 2), busy("r4", 2)], True, 0, 1,
     ScalingDecision(3, stop=("r2",))),
    ("a starting runner is not given back", settings(), 0,
     [RunnerView("r1", alive=True, in_flight=0, idle_since=None, served=0), busy("r2"),
      busy("r3"), busy("r4")], True, 0, 1, ScalingDecision(3, stop=("r2",))),
    ("a follower starts for its direct calls, without minimum or buffer",
     settings(min_concurrency=2, concurrency_buffer=1), 1, [], False, 3, 1,
     ScalingDecision(1, start=1)),
    ("a follower with no direct call starts nothing", settings(min_concurrency=2), 0, [],
     False, 0, 0, ScalingDecision(0)),
    ("a follower's idle runner stops after keep_alive, not before",
     settings(min_concurrency=2), 0, [idle("r1", since=50.0)], False, 0, 0,
     ScalingDecision(0, next_check_s=10.0)),
    ("a follower's queue work is the lead's demand; its busy runner is kept all the same",
     settings(), 0, [busy("r1")], False, 3, 0, ScalingDecision(0)),
    ("a follower's busy runner stands for its direct call: no second runner",
     settings(), 1, [busy("r1")], False, 0, 0, ScalingDecision(1)),
]


@pytest.mark.parametrize(
    ("name", "scaling", "queued", "runners", "lead", "remote", "waiting", "expected"),
    SHARED_CASES, ids=[c[0] for c in SHARED_CASES])
def test_scaling_rule_across_servers(
    name: str, scaling: ScalingSettings, queued: int, runners: list[RunnerView], lead: bool,
    remote: int, waiting: int, expected: ScalingDecision,
) -> None:
    ctx = ScalingContext(settings=scaling, now=100.0, queued_ready=queued,
                         runners=tuple(runners), lead=lead, remote_alive=remote,
                         remote_waiting=waiting)
    assert decide(ctx) == expected


def test_alone_on_its_store_a_server_leads_every_app_and_takes_no_slot() -> None:
    leases = ScalingLeases(None)
    assert leases.leads("any") and not leases.shared
    assert asyncio.run(leases.take_slot("any", "r1", 0))  # no store to ask


def test_a_server_leads_only_what_its_last_renewal_held() -> None:
    leases = ScalingLeases(_NoSlots())
    assert not leases.leads("app") and leases.new_app.is_set()  # never asked for: renew now
    leases.new_app.clear()
    assert leases.update({"app": AppLease(remote_alive=2, remote_waiting=1)}, ["app", "b"])
    assert leases.leads("app") and not leases.leads("b") and not leases.new_app.is_set()
    assert leases.lease("app") == AppLease(2, 1) and leases.lease("b") == AppLease()
    assert not leases.update({"app": AppLease(2, 1)}, ["app", "b"])  # nothing changed
    assert leases.update({}, ["app", "b"])  # a failed renewal leads nothing
    assert not leases.leads("app")


class _NoSlots:
    """Stands for a store whose slots are never asked for here."""

    async def take_runner_slot(self, app_name: str, runner_id: str, limit: int | None) -> bool:
        raise AssertionError("not asked")

    async def free_runner_slot(self, runner_id: str) -> None:
        raise AssertionError("not asked")


def test_the_lead_starts_a_runner_for_its_own_direct_call_whatever_the_others_run() -> None:
    """A direct call runs only on the server it reached: the other servers' runners, which
    cover the app's demand, cannot serve it."""
    ctx = ScalingContext(settings=settings(max_concurrency=2), now=100.0, queued_ready=1,
                         runners=(), remote_alive=1, direct_waiting=1)
    assert decide(ctx) == ScalingDecision(1, start=1)
    full = ScalingContext(settings=settings(max_concurrency=2), now=100.0, queued_ready=1,
                          runners=(), remote_alive=2, direct_waiting=1)
    assert decide(full) == ScalingDecision(1, start=1)  # tried; the slot decides
