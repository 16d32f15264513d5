"""The retry rule as a table: context -> retried or not."""

from __future__ import annotations

import pytest

from falrt.server.queue.retries import RetryContext, backoff_s, should_retry

pytestmark = pytest.mark.unit

CASES = [
    ("a lost runner is retried", RetryContext(1, "connection_error", 1), True),
    ("a timeout is retried", RetryContext(3, "timeout", 3), True),
    ("never past 10 attempts", RetryContext(10, "connection_error", 10), False),
    ("no_retry wins over everything", RetryContext(1, "timeout", 1, no_retry=True,
                                                   verdict=True), False),
    ("a plain handler error is not retried", RetryContext(1, None, 0), False),
    ("the handler may ask for a retry", RetryContext(1, None, 0, verdict=True), True),
    ("the handler may forbid one", RetryContext(1, "connection_error", 1, verdict=False), False),
    ("even a handler's wish stops at 10", RetryContext(10, "server_error", 10, verdict=True),
     False),
    ("the app may skip a condition", RetryContext(1, "timeout", 1,
                                                  skip_conditions=frozenset({"timeout"})), False),
    ("app budget of 0 extra attempts", RetryContext(1, "timeout", 1, app_budget={"timeout": 0}),
     False),
    ("app budget of 2: second failure retried", RetryContext(2, "timeout", 2,
                                                             app_budget={"timeout": 2}), True),
    ("app budget of 2: third failure not", RetryContext(3, "timeout", 3,
                                                        app_budget={"timeout": 2}), False),
    ("the request's budget overrides the app's", RetryContext(
        1, "timeout", 1, request_budget={"timeout": 3}, app_budget={"timeout": 0}), True),
    ("a budget beats a skip", RetryContext(1, "timeout", 1, app_budget={"timeout": 1},
                                           skip_conditions=frozenset({"timeout"})), True),
    ("a budget for another condition does not apply", RetryContext(
        1, "connection_error", 1, request_budget={"timeout": 0}), True),
]


@pytest.mark.parametrize(("name", "ctx", "retried"), CASES, ids=[c[0] for c in CASES])
def test_retry_rule(name: str, ctx: RetryContext, retried: bool) -> None:
    assert should_retry(ctx) is retried


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
