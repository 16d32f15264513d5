"""What a request carries besides its payload, and how outcomes are made.

`SubmitOptions` is what a caller asks at Submit, `Verdict` what a handler says about its
failure; the helpers build the outcomes and errors the scheduler stores. Plain data and pure
functions: no state, no generated code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from falrt import errors
from falrt.files import refs
from falrt.server.state.work import QueuedRequest, WorkItem
from falrt.store.records import ErrorRecord, Outcome, Priority

CONTENT_TYPES = frozenset({"application/json", "application/msgpack"})


class WebhookSink(Protocol):
    """Where completed requests with a webhook URL go (falrt.server.webhooks.WebhookSender)."""

    def submit(
        self, url: str, request_id: str, outcome: Outcome, *,
        on_finished: Callable[[], None] | None = None,
    ) -> bool: ...


@dataclass(frozen=True)
class SubmitOptions:
    """What a caller may ask for at Submit (SubmitRequest in queue.proto)."""

    priority: Priority = Priority.NORMAL
    no_retry: bool = False
    retry_config: Mapping[str, int] = field(default_factory=dict)
    start_timeout_s: float = 0.0
    webhook_url: str = ""
    max_queue_length: int = 0
    idempotency_key: str = ""
    # The input's bytes are a checked PayloadRef (falrt/files/refs.py), set by the edge that
    # checked the file, never by a caller.
    input_by_ref: bool = False
    # The caller follows the request to its result in the same call (Subscribe), set by
    # the edge: its first answer may wait briefly for the result (Recorder.insert).
    followed: bool = False


@dataclass(frozen=True)
class Verdict:
    """What a handler said about its failed attempt (Result in runner.proto)."""

    needs_retry: bool | None = None
    stop_runner: bool | None = None


NO_VERDICT = Verdict()


def error_record(error: errors.FalrtError) -> ErrorRecord:
    return ErrorRecord(error.error_type, error.message, error.code.value[0],
                       error.field_errors, error.traceback)


def content_type_of(value: str, by_ref: bool = False) -> str:
    """A caller's content type, checked; marked as by reference (falrt/files/refs.py) when
    the edge checked the file the input is in."""
    value = value or "application/json"
    if value not in CONTENT_TYPES:
        raise errors.InvalidArgumentError(
            f"unsupported content type {errors.quote(value)}: use application/json or "
            "application/msgpack"
        )
    return refs.marked(value) if by_ref else value


START_TIMEOUT = errors.RequestTimeoutError(
    "the request's start_timeout passed before it could start")


def past_deadline(item: WorkItem) -> bool:
    return (isinstance(item, QueuedRequest) and item.start_deadline is not None
            and time.time() >= item.start_deadline)


def timed_out_error(item: WorkItem) -> ErrorRecord:
    return error_record(errors.RequestTimeoutError(
        f"attempt {getattr(item, 'attempts', 1)} ran past the app's request_timeout"))


def with_logs(item: QueuedRequest, outcome: Outcome) -> Outcome:
    output, ctype = outcome.output, outcome.content_type
    if not output and outcome.error is None and item.last_partial is not None:
        output, ctype = item.last_partial
    return Outcome(output=output, content_type=ctype, error=outcome.error,
                   inference_time_s=outcome.inference_time_s, logs=tuple(item.logs))
