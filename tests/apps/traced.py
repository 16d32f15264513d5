"""A test app whose handler makes a span of its own (tests/test_tracing.py): it must join
the request's trace under the runner's `falrt.handler` span."""

from __future__ import annotations

import msgspec
from opentelemetry import trace

import falrt

tracer = trace.get_tracer("tests.apps.traced")


class Picture(msgspec.Struct):
    width: int


class Thumbnail(msgspec.Struct):
    width: int


class Traced(falrt.App):
    app_name = "traced"
    keep_alive = 60
    max_concurrency = 1

    @falrt.endpoint("/")
    def thumbnail(self, request: Picture) -> Thumbnail:  # (sync: runs on a handler thread)
        with tracer.start_as_current_span("resize") as span:
            span.set_attribute("width", request.width)
            if request.width < 0:
                raise ValueError("a picture has no negative width")
            return Thumbnail(request.width // 4)
