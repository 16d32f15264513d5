"""The rules a caller's Submit options must keep, whatever edge they came through.

The gRPC edge (`falrt.server.api.convert.submit_options`) and the HTTP edge
(`falrt.server.http.queue_api`) each read the options from their wire format and hand the
plain values to `check_options`, so one set of rules (and one set of messages) applies to both.
"""

from __future__ import annotations

from collections.abc import Mapping

from falrt import errors
from falrt.limits import MAX_DURATION_SECONDS
from falrt.server.queue.outcomes import SubmitOptions
from falrt.server.queue.webhooks import check_webhook_url
from falrt.store.records import Priority
from falrt.vocabulary import RetryCondition, names

CONDITIONS = frozenset(names(RetryCondition))
MAX_IDEMPOTENCY_KEY = 256


def check_options(
    *, priority: Priority = Priority.NORMAL, no_retry: bool = False,
    retry_config: Mapping[str, int] | None = None, start_timeout_s: float = 0.0,
    webhook_url: str = "", max_queue_length: int = 0, idempotency_key: str = "",
    followed: bool = False,
) -> SubmitOptions:
    """The options, checked. Raises InvalidArgumentError naming what is wrong.

    On the hot path of every Submit: options left at their defaults (the usual case) cost
    one test each.
    """
    config: dict[str, int] = {}
    if retry_config:
        config = dict(retry_config)
        unknown = config.keys() - CONDITIONS
        if unknown:
            raise errors.InvalidArgumentError(
                f"unknown retry condition(s) {sorted(unknown)}: use {sorted(CONDITIONS)}")
        if any(n < 0 for n in config.values()):
            raise errors.InvalidArgumentError("retry_config budgets must be >= 0")
    if start_timeout_s and not 0 < start_timeout_s <= MAX_DURATION_SECONDS:
        # (a NaN fails this test too)
        raise errors.InvalidArgumentError(
            f"start_timeout must be a number of seconds > 0 and at most {MAX_DURATION_SECONDS}")
    if start_timeout_s < 0 or max_queue_length < 0:
        raise errors.InvalidArgumentError("start_timeout and max_queue_length must be >= 0")
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise errors.InvalidArgumentError(
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    if webhook_url:
        check_webhook_url(webhook_url)
    return SubmitOptions(
        priority=priority, no_retry=no_retry, retry_config=config,
        start_timeout_s=start_timeout_s, webhook_url=webhook_url,
        max_queue_length=max_queue_length, idempotency_key=idempotency_key, followed=followed,
    )


__all__ = ["CONDITIONS", "check_options"]
