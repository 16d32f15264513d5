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

Several servers on one store (docs/stores.md, "Scaling across servers"): one server at a
time holds the app's scaling lease and *leads* it:

- The lead counts `remote_alive` (the app's runners on the other servers) as alive, so
  min_concurrency, the buffers and max_concurrency hold for the app as a whole; it stops
  only its own runners. `desired` is then what it wants on its own: the app's total minus
  `remote_alive`, but at least `local`, the runners its waiting direct calls need (they run
  only here): local = ceil(direct_waiting / max_multiplexing), at most the cap.
- `remote_waiting` other servers wait for a runner slot (their direct calls have no runner):
  the lead's cap is `max_concurrency - remote_waiting`, and its runners above that cap stop
  at once to free the slots: idle ones first (longest idle first; keep_alive does not hold
  them), then busy ones, least busy first (they drain: their work in flight finishes).
- A server that does not lead an app scales it only for its own direct calls: the caller
  counts as `queued_ready` (and `direct_waiting`) its waiting direct calls only, the work in
  flight on its runners is not demand (busy runners are never stopped anyway), and
  min_concurrency and the buffers are 0 there (`follower_settings`); it ignores the remote
  counts.
- `next_check_s` says when the decision may change without any event (a keep-alive
  expiring, a queued request passing scaling_delay, a backoff ending).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    lead: bool = True  # this server holds the app's scaling lease (always, alone on a store)
    remote_alive: int = 0  # the app's runners on other servers (the lead counts them)
    remote_waiting: int = 0  # other servers waiting for a runner slot of the app
    direct_waiting: int = 0  # of the demand, direct calls waiting here (they run only here)


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    start: int = 0
    stop: tuple[str, ...] = ()
    next_check_s: float | None = None


def decide(ctx: ScalingContext) -> ScalingDecision:
    """The scaling decision for one app; see the module docstring for the rule."""
    s = ctx.settings if ctx.lead else follower_settings(ctx.settings)
    remote, waiting = (ctx.remote_alive, ctx.remote_waiting) if ctx.lead else (0, 0)
    cap = max(0, s.max_concurrency - waiting)
    in_flight = sum(r.in_flight for r in ctx.runners if r.alive)
    # A follower's runners take queued work too, which is the lead's to scale for.
    active = ctx.queued_ready + (in_flight if ctx.lead else 0)
    total = min(cap, desired_count(s, active))
    local = math.ceil(ctx.direct_waiting / max(1, s.max_multiplexing))
    desired = max(0, total - remote, min(cap, local))
    alive = [r for r in ctx.runners if r.alive]
    waits = [] if ctx.next_ready_s is None else [ctx.next_ready_s]
    if len(alive) < desired:
        if ctx.now < ctx.backoff_until:
            backoff_left = ctx.backoff_until - ctx.now
            return ScalingDecision(desired, next_check_s=_soonest(waits, backoff_left))
        return ScalingDecision(desired, start=desired - len(alive), next_check_s=_soonest(waits))
    # Slots other servers wait for: freed now (a lowered max_concurrency alone waits for
    # keep_alive, as ever).
    yielded = _give_back(ctx, len(alive) + remote - cap) if waiting else ()
    stop, expiries = _expired_idle(ctx, s, len(alive) - desired - len(yielded), set(yielded))
    return ScalingDecision(desired, stop=yielded + stop, next_check_s=_soonest(waits, *expiries))


def follower_settings(s: ScalingSettings) -> ScalingSettings:
    """The settings a server that does not lead the app scales it by (its direct calls
    only): no minimum and no buffer."""
    return replace(s, min_concurrency=0, concurrency_buffer=0, concurrency_buffer_perc=0)


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


def _give_back(ctx: ScalingContext, count: int) -> tuple[str, ...]:
    """Up to `count` runners to stop for slots other servers wait for: idle ones, longest
    idle first, whatever their keep_alive; then busy ones, least busy first. Starting
    runners are left to start."""
    idle = sorted((0, r.idle_since, r.runner_id) for r in ctx.runners
                  if r.alive and not r.in_flight and r.idle_since is not None)
    busy = sorted((1, float(r.in_flight), r.runner_id) for r in ctx.runners
                  if r.alive and r.in_flight)
    return tuple(runner_id for *_, runner_id in [*idle, *busy][: max(0, count)])


def _expired_idle(
    ctx: ScalingContext, s: ScalingSettings, surplus: int, taken: set[str],
) -> tuple[tuple[str, ...], list[float]]:
    """Idle runners to stop (at most `surplus`, none of `taken`) and the delays until others
    expire."""
    candidates: list[tuple[float, str]] = []
    expiries: list[float] = []
    for r in ctx.runners:
        if not r.alive or r.in_flight or r.idle_since is None or r.runner_id in taken:
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
