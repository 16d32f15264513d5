"""fal's status documents of a queued request, as the queue API's status routes answer them.

`IN_QUEUE`: status, request_id, queue_position, response_url; `IN_PROGRESS`: + logs;
`COMPLETED`: + logs, metrics {inference_time}, and error, error_type when it failed
(fal-semantics 12.1). `logs` is null unless the caller asked for them (`?logs=1`). Log lines
are `{message, level, source, timestamp}` with an ISO 8601 UTC timestamp, as fal's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from falrt.server.state.work import QueuedRequest
from falrt.store.records import LogRecord, Status

_LEVELS = {"stdout": "STDOUT", "stderr": "STDERR"}


def log_line(record: LogRecord) -> dict[str, str]:
    stamp = datetime.fromtimestamp(record.timestamp, UTC).isoformat().replace("+00:00", "Z")
    return {"message": record.message, "level": _LEVELS.get(record.source, "INFO"),
            "source": record.source, "timestamp": stamp}


def status_document(
    item: QueuedRequest, *, position: int, response_url: str,
    logs: Sequence[LogRecord] | None,
) -> bytes:
    """The status of `item` as fal's JSON (`logs`: None when not asked for)."""
    status = item.status
    doc: dict[str, Any] = {"status": status.name, "request_id": item.request_id,
                           "response_url": response_url}
    if status is Status.IN_QUEUE:
        doc["queue_position"] = position
        if item.waiting_reason:
            doc["waiting_reason"] = item.waiting_reason
    else:
        doc["logs"] = None if logs is None else [log_line(line) for line in logs]
    outcome = item.outcome
    if status is Status.COMPLETED and outcome is not None:
        doc["metrics"] = {"inference_time": outcome.inference_time_s}
        if outcome.error is not None:
            doc["error"] = outcome.error.message
            doc["error_type"] = outcome.error.error_type
    return msgspec.json.encode(doc)
