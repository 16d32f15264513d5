"""The scaling rule: a pure function from one frozen context to one frozen decision.

For one app at time `now` (monotonic seconds):

    active   = requests in flight on its runners + queued requests that waited scaling_delay
    buffer   = max(concurrency_buffer, ceil(concurrency_buffer_perc / 100 * active))
    desired  = min(max_concurrency, max(min_concurrency, ceil(active / max_multiplexing) + buffer))
    alive    = runners PENDING, IMAGE_PULL, SETUP, IDLE or RUNNING

- alive < desired: start `desired - alive` runners, unless the app is in crash backoff.
- alive > desired: stop idle runners (no request in flight) whose idle time reached
  keep_alive, longest idle first, at most `alive - desired` of them. A runner that never
  served a request is stopped after FRESH_REAP_S idle when the app sets neither
  min_concurrency nor a buffer (fal's rule).
The caller counts `queued_ready` (and `next_ready_s`) from the app's queue; with no
scaling_delay that is the queue's length, so a decision costs O(runners), not O(queue).
- `next_check_s` says when the decision may change without any event (a keep-alive
  expiring, a queued request passing scaling_delay, a backoff ending).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FRESH_REAP_S = 10.0


@dataclass(frozen=True)
class ScalingSettings:
    min_concurrency: int
    max_concurrency: int
    concurrency_buffer: int
    concurrency_buffer_perc: float
    keep_alive_s: float
    scaling_delay_s: float
    max_multiplexing: int


@dataclass(frozen=True)
class RunnerView:
    runner_id: str
    alive: bool
    in_flight: int
    idle_since: float | None  # monotonic; None while not IDLE
    served: int


@dataclass(frozen=True)
class ScalingContext:
    settings: ScalingSettings
    now: float
    queued_ready: int  # queued requests that have waited at least scaling_delay
    runners: tuple[RunnerView, ...]
    backoff_until: float = 0.0
    next_ready_s: float | None = None  # until the next queued request has waited that long


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    start: int = 0
    stop: tuple[str, ...] = ()
    next_check_s: float | None = None


def decide(ctx: ScalingContext) -> ScalingDecision:
    """The scaling decision for one app; see the module docstring for the rule."""
    s = ctx.settings
    active = ctx.queued_ready + sum(r.in_flight for r in ctx.runners if r.alive)
    desired = desired_count(s, active)
    alive = [r for r in ctx.runners if r.alive]
    waits = [] if ctx.next_ready_s is None else [ctx.next_ready_s]
    if len(alive) < desired:
        if ctx.now < ctx.backoff_until:
            backoff_left = ctx.backoff_until - ctx.now
            return ScalingDecision(desired, next_check_s=_soonest(waits, backoff_left))
        return ScalingDecision(desired, start=desired - len(alive), next_check_s=_soonest(waits))
    stop, expiries = _expired_idle(ctx, len(alive) - desired)
    return ScalingDecision(desired, stop=stop, next_check_s=_soonest(waits, *expiries))


def desired_count(s: ScalingSettings, active: int) -> int:
    """The runners wanted for `active` requests (the rule in the module docstring)."""
    buffer = max(s.concurrency_buffer, math.ceil(s.concurrency_buffer_perc / 100 * active))
    wanted = max(s.min_concurrency, math.ceil(active / max(1, s.max_multiplexing)) + buffer)
    return min(s.max_concurrency, wanted)


def idle_limit(s: ScalingSettings, served: int) -> float:
    """How long a runner that served `served` requests may stay idle before it may be
    stopped (when it is surplus)."""
    reap_fresh = s.min_concurrency == 0 and s.concurrency_buffer == 0
    return FRESH_REAP_S if (reap_fresh and served == 0) else s.keep_alive_s


def _expired_idle(ctx: ScalingContext, surplus: int) -> tuple[tuple[str, ...], list[float]]:
    """Idle runners to stop (at most `surplus`) and the delays until others expire."""
    s = ctx.settings
    candidates: list[tuple[float, str]] = []
    expiries: list[float] = []
    for r in ctx.runners:
        if not r.alive or r.in_flight or r.idle_since is None:
            continue
        left = r.idle_since + idle_limit(s, r.served) - ctx.now
        if left <= 0:
            candidates.append((r.idle_since, r.runner_id))
        else:
            expiries.append(left)
    candidates.sort()
    stop = tuple(runner_id for _, runner_id in candidates[: max(0, surplus)])
    if surplus <= 0:
        expiries = []
    return stop, expiries


def _soonest(*groups: float | list[float]) -> float | None:
    values: list[float] = []
    for group in groups:
        values.extend(group if isinstance(group, list) else [group])
    positive = [max(0.0, v) for v in values]
    return min(positive) if positive else None
