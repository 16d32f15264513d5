"""The handler's span: each request's handler runs inside a span `falrt.handler` whose parent
is the attempt's span on the server (the Assign's `traceparent`), so the spans handler code
makes (`opentelemetry.trace.get_tracer(__name__).start_as_current_span(...)`) join the
request's trace.

On when the server exports traces (`FALRT_OTLP_ENDPOINT` in the runner's environment) and the
OpenTelemetry SDK is importable here; then this process's global tracer provider exports to
the same collector (OTLP over HTTP, batched on the SDK's thread). Off, `span` costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VAR = "FALRT_OTLP_ENDPOINT"
_NO_SPAN = contextlib.nullcontext()


class HandlerTracing:
    """The spans of this runner's handlers; off (the default) unless `endpoint` is set."""

    def __init__(self, endpoint: str = "", app_name: str = "") -> None:
        self._provider: Any = None
        if not endpoint:
            return
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            log.warning("traces are not exported from this runner: the OpenTelemetry SDK "
                        "is not installed in its environment (%s)", exc)
            return
        base = endpoint.rstrip("/")
        url = base if base.endswith("/v1/traces") else f"{base}/v1/traces"
        provider = TracerProvider(resource=Resource.create(
            {"service.name": f"falrt-runner {app_name}".strip()}))
        # (an export gives up after 5 s: a collector that is down delays the runner's exit
        # by at most that much)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url,
                                                                        timeout=5.0)))
        trace.set_tracer_provider(provider)  # handler code's get_tracer() finds it
        self._provider = provider
        self._tracer = provider.get_tracer("falrt.shim")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environ(cls) -> HandlerTracing:
        return cls(os.environ.get(ENDPOINT_VAR, ""), os.environ.get("FALRT_APP_NAME", ""))

    def span(
        self, traceparent: str, request_id: str, path: str
    ) -> contextlib.AbstractContextManager[None]:
        """The handler's span, current while the block runs (and in the threads it starts
        with a copy of its context). Off, or for an untraced request, a context that does
        nothing (one shared object: no generator made per request)."""
        if self._provider is None or not traceparent:
            return _NO_SPAN
        return self._span(traceparent, request_id, path)

    @contextlib.contextmanager
    def _span(self, traceparent: str, request_id: str, path: str) -> Iterator[None]:
        parent = self._propagator.extract({"traceparent": traceparent})
        with self._tracer.start_as_current_span(
                "falrt.handler", context=parent,
                attributes={"falrt.request_id": request_id, "falrt.path": path}):
            yield

    def shutdown(self) -> None:
        """Sends the spans still batched (a bounded wait)."""
        if self._provider is not None:
            self._provider.shutdown()
