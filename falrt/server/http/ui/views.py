"""The JSON documents of the dashboard's API (`/ui/api/*`), from the server's own state.

Pure functions of plain objects (apps, runners, requests, samples) and `now`: no I/O, so
their shapes are tested without a server. Every value is data for the page to put into
the DOM as text; nothing here is HTML.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

import msgspec

from falrt.sdk.endpoints import EndpointKind
from falrt.server.http.ui.forms import form_fields
from falrt.server.http.ui.history import Sample, sparkline
from falrt.server.state.apps import AppState
from falrt.server.state.runners import RunnerHandle
from falrt.server.state.work import QueuedRequest
from falrt.store.records import EndpointRecord, Outcome, RequestRecord

Doc = dict[str, Any]
_SHOWN_BYTES = 256 * 1024  # of an output: more is summarised, not sent to the page


def app_summary(app: AppState, runners: list[RunnerHandle], queued: int) -> Doc:
    """One row of the apps page."""
    states = Counter(r.state.name for r in runners)
    return {
        "name": app.name, "revision_id": app.revision.revision_id, "auth": app.record.auth,
        "updated_at": app.record.updated_at, "queued": queued,
        "runners": dict(sorted(states.items())),
        "endpoints": [endpoint_summary(e) for e in app.revision.endpoints],
        "waiting_reason": app.waiting_reason(),
    }


def endpoint_summary(endpoint: EndpointRecord) -> Doc:
    return {"path": endpoint.path, "name": endpoint.name, "kind": _kind(endpoint.kind)}


def app_detail(app: AppState, owner: str, runners: list[RunnerHandle], queued: int,
               now: float) -> Doc:
    """The app page: its summary, each endpoint's schemas and form, its runners."""
    doc = app_summary(app, runners, queued)
    doc["endpoint_id"] = f"{owner}/{app.name}"
    doc["revision_message"] = app.revision.message
    doc["endpoints"] = [endpoint_detail(e) for e in app.revision.endpoints]
    doc["runner_list"] = [runner_view(r, now) for r in runners]
    return doc


def endpoint_detail(endpoint: EndpointRecord) -> Doc:
    fields = form_fields(endpoint.input_schema_json)
    return {
        **endpoint_summary(endpoint),
        "input_schema": _schema(endpoint.input_schema_json),
        "output_schema": _schema(endpoint.output_schema_json),
        "fields": None if fields is None else [asdict(f) for f in fields],
    }


def runner_view(runner: RunnerHandle, now: float) -> Doc:
    """A runner with its state timeline: one segment per state entered, the last one
    running to `now` (or to its end, for a terminated runner)."""
    history = runner.history()
    segments = [{"state": state.name, "start": start,
                 "end": history[i + 1][1] if i + 1 < len(history) else now}
                for i, (state, start) in enumerate(history)]
    return {
        "runner_id": runner.runner_id, "app_name": runner.app_name,
        "revision_id": runner.revision_id, "state": runner.state.name,
        "machine_type": runner.machine_type, "started_at": runner.started_at,
        "state_since": runner.state_since, "in_flight": len(runner.in_flight),
        "max_multiplexing": runner.max_multiplexing, "served": runner.served,
        "last_error": runner.last_error, "timeline": segments,
        "gpus": [asdict(g) for g in runner.gpu_stats],
    }


def history_view(samples: list[Sample], interval_s: float) -> Doc:
    """The charts: each series' values and its sparkline's points, oldest first."""
    series = {
        "queue_depth": [float(s.queue_depth) for s in samples],
        "requests_per_s": [round(s.requests_per_s, 3) for s in samples],
        "runners": [float(s.runners) for s in samples],
    }
    return {
        "interval_s": interval_s,
        "since": samples[0].at if samples else None,
        "series": {name: {"values": values, "points": sparkline(values),
                          "last": values[-1] if values else 0, "max": max(values, default=0)}
                   for name, values in series.items()},
    }


def request_view(item: QueuedRequest, record: RequestRecord | None, position: int) -> Doc:
    """A request's page: statuses with the times the store has, logs, attempts, and the
    result or error."""
    outcome = item.outcome
    times = {"submitted": record.created_at if record else None,
             "completed": record.completed_at if record else None}
    return {
        "request_id": item.request_id, "app_name": item.app_name, "path": item.path,
        "status": item.status.name, "attempts": item.attempts, "queue_position": position,
        "runner_id": item.runner_id, "waiting_reason": item.waiting_reason,
        "times": times, "priority": item.priority.name,
        "input": _payload(item.input, item.content_type),
        "logs": [{"timestamp": line.timestamp, "message": line.message, "source": line.source}
                 for line in item.logs],
        "result": None if outcome is None else outcome_view(outcome),
    }


def outcome_view(outcome: Outcome) -> Doc:
    if outcome.error is not None:
        error = outcome.error
        return {"error": {"error_type": error.error_type, "message": error.message,
                          "traceback": error.traceback}}
    return {"output": _payload(outcome.output, outcome.content_type),
            "inference_time_s": outcome.inference_time_s}


def _payload(data: bytes, content_type: str) -> Doc:
    """A payload as JSON when it is JSON or msgpack, else its size and type."""
    if len(data) > _SHOWN_BYTES:
        return {"content_type": content_type, "size_bytes": len(data), "value": None}
    try:
        if "msgpack" in content_type:
            value = msgspec.msgpack.decode(data)
        else:
            value = json.loads(data) if data else None
        msgspec.json.encode(value)  # (msgpack may hold what JSON cannot: bytes)
    except (ValueError, TypeError, msgspec.DecodeError, msgspec.EncodeError):
        return {"content_type": content_type, "size_bytes": len(data), "value": None}
    return {"content_type": content_type or "application/json", "size_bytes": len(data),
            "value": value}


def _schema(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _kind(number: int) -> str:
    try:
        return EndpointKind.from_number(number).value
    except ValueError:
        return "unknown"
