"""Traces of requests (OpenTelemetry): a span from the edge through the queue wait, each
attempt on a runner, and the runner's handler, with the caller's W3C `traceparent` as the
parent.

One trace per request, its spans (docs/observability.md, "Traces"):

- `falrt.submit` / `falrt.subscribe` (queue path: from arrival to the stored
  acknowledgement) or `falrt.run` / `falrt.stream` (direct path: the whole call), kind
  SERVER, child of the caller's `traceparent` (gRPC metadata or HTTP header) when it sent
  one; attributes `falrt.request_id`, `falrt.app`, `falrt.path`, `falrt.edge` (grpc/http);
- `falrt.queue`: from queueing to assignment (once per attempt), child of the edge span;
- `falrt.dispatch`: one attempt, from assignment to its result (`falrt.runner_id`,
  `falrt.attempt`), child of the edge span; its context travels to the runner in the Assign
  (`traceparent`), where the shim makes the handler's span (`falrt.handler`) its child, and
  handler code's own spans children of that;
- a failed request's spans end with status ERROR and its `falrt.error_type`.

Spans are made only when tracing is on: `--otlp-endpoint URL` exports them (OTLP over HTTP,
batched, off the event loop); `--tracing` makes them without exporting (to measure the
cost). Off, a request carries no trace and every hook is one attribute test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from falrt.store.records import Outcome

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
SERVICE_NAME = "falrt-server"
# An export (with its retries) gives up after this: a collector that is down delays the
# server's stop by at most this much, and loses those spans.
EXPORT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a call came in, for its edge span: the edge (grpc, http), the call (submit,
    subscribe, run, stream: the span is `falrt.<call>`), and the caller's traceparent."""

    edge: str = "grpc"
    call: str = ""
    traceparent: str = ""


UNTRACED = Origin()


@dataclass(slots=True)
class RequestTrace:
    """The open spans of one request (on its work item's `trace`)."""

    edge: Any
    context: Any  # the edge span's context: the parent of the others
    queue: Any = None
    dispatch: Any = None
    attempts: int = 0
    # The dispatch span's traceparent, sent to the runner with the Assign.
    runner_parent: str = ""
    direct: bool = False


class Tracing:
    """The spans of requests; `enabled` False makes every method a no-op."""

    def __init__(self, provider: Any = None) -> None:
        self.enabled = provider is not None
        self._provider = provider
        if provider is None:
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        self._trace = trace
        self._tracer = provider.get_tracer("falrt.server")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def configure(cls, otlp_endpoint: str, on: bool) -> Tracing:
        """Tracing exporting to `otlp_endpoint` (OTLP/HTTP, its `/v1/traces`), or making
        spans without exporting them (`on` alone), or off."""
        if not otlp_endpoint and not on:
            return cls()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
                endpoint=traces_url(otlp_endpoint), timeout=EXPORT_TIMEOUT_S)))
        return cls(provider)

    def shutdown(self) -> None:
        """Exports what is left (a bounded wait) and stops the exporter."""
        if self._provider is not None:
            self._provider.shutdown()

    # -- the request's life -----------------------------------------------------------

    def begin(self, item: Any, app: str, origin: Origin, *, direct: bool) -> None:
        """The edge span of a new request (and its first queue span)."""
        name = f"falrt.{origin.call or ('run' if direct else 'submit')}"
        parent = None
        if origin.traceparent:
            parent = self._propagator.extract({TRACEPARENT: origin.traceparent})
        edge = self._tracer.start_span(
            name, context=parent, kind=self._trace.SpanKind.SERVER, attributes={
                "falrt.request_id": item.request_id, "falrt.app": app,
                "falrt.path": item.path, "falrt.edge": origin.edge})
        context = self._trace.set_span_in_context(edge)
        item.trace = RequestTrace(edge, context, direct=direct)
        item.trace.queue = self._tracer.start_span("falrt.queue", context=context)

    def acknowledged(self, item: Any, error_type: str = "") -> None:
        """A queued request's edge call answers: stored, or not (`error_type`)."""
        trace: RequestTrace | None = item.trace
        if trace is not None and not trace.direct:
            _end(trace.edge, error_type)

    def assigned(self, item: Any, runner_id: str) -> None:
        """An attempt starts on `runner_id`: the queue wait ends, the dispatch span starts,
        and its context is what the runner's handler span hangs from."""
        trace: RequestTrace | None = item.trace
        if trace is None:
            return
        if trace.queue is not None:
            trace.queue.end()
            trace.queue = None
        trace.attempts += 1
        trace.dispatch = span = self._tracer.start_span(
            "falrt.dispatch", context=trace.context,
            attributes={"falrt.runner_id": runner_id, "falrt.attempt": trace.attempts})
        trace.runner_parent = _traceparent(span.get_span_context())

    def attempt_ended(self, item: Any, error_type: str = "") -> None:
        """The running attempt ended (`error_type`: how it failed)."""
        trace: RequestTrace | None = item.trace
        if trace is None or trace.dispatch is None:
            return
        _end(trace.dispatch, error_type)
        trace.dispatch = None

    def requeued(self, item: Any) -> None:
        """The request waits for another attempt: a new queue span."""
        trace: RequestTrace | None = item.trace
        if trace is not None and trace.queue is None:
            trace.queue = self._tracer.start_span("falrt.queue", context=trace.context)

    def finished(self, item: Any, outcome: Outcome) -> None:
        """The request completed: every span of it still open ends."""
        trace: RequestTrace | None = item.trace
        if trace is None:
            return
        item.trace = None
        error_type = outcome.error.error_type if outcome.error is not None else ""
        for span in (trace.queue, trace.dispatch):
            if span is not None:
                _end(span, error_type)
        if trace.direct:  # (a queued request's edge span ends when it is acknowledged)
            _end(trace.edge, error_type)


def _traceparent(context: Any) -> str:
    """A span context as W3C `traceparent` (what the propagator's inject writes, without
    building a context and a carrier for it)."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _end(span: Any, error_type: str) -> None:
    if error_type:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("falrt.error_type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (`http://host:4318`), or the URL
    itself when it already names a path."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def grpc_origin(context: Any, call: str) -> Origin:
    """The origin of a gRPC call: its `traceparent` metadata (lower-case, as gRPC sends
    metadata keys)."""
    metadata: Iterable[tuple[str, Any]] = context.invocation_metadata() or ()
    for key, value in metadata:
        if key == TRACEPARENT and isinstance(value, str):
            return Origin("grpc", call, value)
    return Origin("grpc", call)


def http_origin(headers: Mapping[str, str], call: str) -> Origin:
    """The origin of an HTTP call: its `traceparent` header."""
    return Origin("http", call, headers.get(TRACEPARENT, ""))
