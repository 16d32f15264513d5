"""Traces of requests on a real server, exported over OTLP/HTTP to a receiver this module
runs (the OpenTelemetry SDK's own protocol, decoded with opentelemetry-proto): one trace per
request from the caller's `traceparent` through the edge, the queue wait, the attempt and the
runner's handler, down to a span the handler made."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from falrt.client import SyncClient, connection, credentials
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.https import HTTP_LISTENING

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    attributes: dict[str, object]
    error: bool


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse()
                                 .SerializeToString())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: a.value.string_value or a.value.int_value
                                  for a in s.attributes}
                    with self._lock:
                        self.spans.append(Span(
                            s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                            service, attributes, s.status.code == 2))

    def trace(self, trace_id: str, names: set[str]) -> dict[str, Span] | None:
        """The spans of one trace by name, once all of `names` arrived."""
        with self._lock:
            found = {s.name: s for s in self.spans if s.trace_id == trace_id}
        return found if names <= set(found) else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
           ) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tracing")
    before = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export within 0.1 s (server and runners)
    try:
        proc = ServerProcess(root / "data", root / "server.log", extra=[
            "--otlp-endpoint", receiver.url, "--http-listen", "127.0.0.1:0"]).start()
    finally:
        if before is None:
            del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = before
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def traced(server: ServerProcess) -> str:
    return server.deploy("tests/apps/traced.py::Traced")


def _caller_context() -> tuple[str, str, str]:
    """A caller's (traceparent, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


QUEUED = {"falrt.submit", "falrt.queue", "falrt.dispatch", "falrt.handler", "resize"}


def test_a_queued_request_is_one_trace_from_the_callers_span_to_the_handlers_own(
    server: ServerProcess, receiver: Receiver, traced: str
) -> None:
    traceparent, trace_id, caller_span = _caller_context()
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        stored = stub.Submit(queue_pb2.SubmitRequest(
            endpoint_id=traced, input=common_pb2.Payload(data=b'{"width": 640}')),
            metadata=(("traceparent", traceparent),))
    with SyncClient(server.address) as client:
        assert client.wait(stored.request_id).output_or_raise() == {"width": 160}

    spans = wait_for(lambda: receiver.trace(trace_id, QUEUED), timeout=30,
                     what=f"the spans {sorted(QUEUED)} of trace {trace_id}")
    edge = spans["falrt.submit"]
    assert edge.parent_id == caller_span
    assert edge.attributes["falrt.request_id"] == stored.request_id
    assert edge.attributes["falrt.edge"] == "grpc" and edge.service == "falrt-server"
    assert spans["falrt.queue"].parent_id == edge.span_id
    assert spans["falrt.dispatch"].parent_id == edge.span_id
    assert spans["falrt.handler"].parent_id == spans["falrt.dispatch"].span_id
    assert spans["falrt.handler"].service.startswith("falrt-runner")
    assert spans["resize"].parent_id == spans["falrt.handler"].span_id
    assert spans["resize"].attributes["width"] == 640
    assert not any(s.error for s in spans.values())


def test_http_calls_take_the_traceparent_header_and_failures_mark_their_spans(
    server: ServerProcess, receiver: Receiver, traced: str
) -> None:
    http = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
    key = credentials.key_for(server.address)
    traceparent, trace_id, caller_span = _caller_context()
    answered = httpx.post(f"{http}/{traced}", json={"width": 64}, timeout=60, headers={
        "Authorization": f"Key {key}", "traceparent": traceparent})
    assert answered.json() == {"width": 16}
    spans = wait_for(lambda: receiver.trace(
        trace_id, {"falrt.run", "falrt.queue", "falrt.dispatch", "falrt.handler", "resize"}),
        timeout=30, what=f"the direct call's trace {trace_id}")
    assert spans["falrt.run"].parent_id == caller_span
    assert spans["falrt.run"].attributes["falrt.edge"] == "http"

    traceparent, trace_id, _ = _caller_context()
    failed = httpx.post(f"{http}/{traced}", json={"width": -1}, timeout=60, headers={
        "Authorization": f"Key {key}", "traceparent": traceparent})
    assert failed.status_code == 500
    spans = wait_for(lambda: receiver.trace(trace_id, {"falrt.run", "falrt.dispatch"}),
                     timeout=30, what="the failed call's spans")
    assert spans["falrt.run"].error and spans["falrt.dispatch"].error
    assert spans["falrt.run"].attributes["falrt.error_type"] == "runner_server_error"
