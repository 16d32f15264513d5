"""When a failed attempt is retried, and after how long: a pure policy.

Failure conditions (fal's names; `falrt.vocabulary.RetryCondition`):
- `timeout`: the attempt ran past the app's request_timeout (its runner is killed);
- `connection_error`: the runner went away (process died, stream broke) mid-request;
- `server_error`: the handler failed and asked for a retry (`needs_retry`).
A handler exception without a verdict has no condition: like fal's 500, it is not retried.

Precedence, first match wins (fal's order):
1. the caller's `no_retry` -> no retry;
2. 10 attempts in all -> no retry, always;
3. the handler's verdict (`needs_retry` true or false) -> as it says;
4. no condition -> no retry;
5. the request's `retry_config[condition]`, else the app's `retry_config[condition]`: extra
   attempts allowed for that condition -> retry while this condition has failed at most that
   many times;
6. the app's `skip_retry_conditions` names the condition -> no retry;
7. otherwise -> retry.

Backoff before the retried attempt: `base * 2 ** (attempts - 1)`, at most `cap`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class RetryContext:
    attempts: int  # attempts made so far, the failed one included
    condition: str | None
    condition_failures: int  # failures of this condition so far, this one included
    no_retry: bool = False
    verdict: bool | None = None
    request_budget: Mapping[str, int] | None = None
    app_budget: Mapping[str, int] | None = None
    skip_conditions: frozenset[str] = frozenset()


def should_retry(ctx: RetryContext) -> bool:
    """Whether the failed attempt is retried; see the module docstring for the rule."""
    if ctx.no_retry or ctx.attempts >= MAX_ATTEMPTS:
        return False
    if ctx.verdict is not None:
        return ctx.verdict
    if ctx.condition is None:
        return False
    for budget in (ctx.request_budget, ctx.app_budget):
        if budget and ctx.condition in budget:
            return ctx.condition_failures <= budget[ctx.condition]
    return ctx.condition not in ctx.skip_conditions


def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Delay before the next attempt, after `attempts` attempts."""
    return float(min(cap_s, base_s * 2.0 ** max(0, attempts - 1)))
