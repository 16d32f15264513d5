"""fal's submit headers and query parameters read into SubmitOptions, as a table: what each
value becomes, and which values are refused (with the gRPC edge's rules, `check_options`)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from falrt import errors
from falrt.server.http.queue_api import submit_options
from falrt.server.queue.outcomes import SubmitOptions
from falrt.store.records import Priority

pytestmark = pytest.mark.unit


def request(headers: dict[str, str], query: str = "") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/local/app",
                    "query_string": query.encode(),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_no_header_gives_the_defaults() -> None:
    assert submit_options(request({})) == SubmitOptions()


def test_every_header_and_query_parameter_is_read() -> None:
    options = submit_options(request({
        "X-Fal-Request-Timeout": "2.5", "X-Fal-Queue-Priority": "LOW", "X-Fal-No-Retry": "yes",
        "X-Fal-Retry-Config": '{"timeout": {"retries": 0}, "server_error": {"retries": 3}}',
        "X-Fal-Idempotency-Key": "order-1",
    }, "fal_webhook=https%3A%2F%2Fexample.com%2Fhook&fal_max_queue_length=7"))
    assert options == SubmitOptions(
        priority=Priority.LOW, no_retry=True, retry_config={"timeout": 0, "server_error": 3},
        start_timeout_s=2.5, webhook_url="https://example.com/hook", max_queue_length=7,
        idempotency_key="order-1")


@pytest.mark.parametrize(("header", "value", "expected"), [
    ("X-Fal-No-Retry", "1", True), ("X-Fal-No-Retry", "true", True),
    ("X-Fal-No-Retry", "0", False), ("X-Fal-No-Retry", "false", False),
    ("X-Fal-Queue-Priority", "normal", Priority.NORMAL),
])
def test_fals_spellings_are_taken(header: str, value: str, expected: object) -> None:
    options = submit_options(request({header: value}))
    field = "no_retry" if header == "X-Fal-No-Retry" else "priority"
    assert getattr(options, field) == expected


@pytest.mark.parametrize(("headers", "query", "names"), [
    ({"X-Fal-Request-Timeout": "soon"}, "", "X-Fal-Request-Timeout"),
    ({"X-Fal-Request-Timeout": "0"}, "", "X-Fal-Request-Timeout"),
    ({"X-Fal-Request-Timeout": "nan"}, "", "X-Fal-Request-Timeout"),
    ({"X-Fal-Request-Timeout": "1e300"}, "", "start_timeout"),
    ({"X-Fal-Queue-Priority": "urgent"}, "", "X-Fal-Queue-Priority"),
    ({"X-Fal-No-Retry": "maybe"}, "", "X-Fal-No-Retry"),
    ({"X-Fal-Retry-Config": "[1]"}, "", "X-Fal-Retry-Config"),
    ({"X-Fal-Retry-Config": '{"timeout": 1}'}, "", "X-Fal-Retry-Config"),
    ({"X-Fal-Retry-Config": '{"timeout": {"retries": true}}'}, "", "X-Fal-Retry-Config"),
    ({"X-Fal-Retry-Config": '{"later": {"retries": 1}}'}, "", "unknown retry condition"),
    ({}, "fal_max_queue_length=-1", "fal_max_queue_length"),
    ({}, "fal_max_queue_length=ten", "fal_max_queue_length"),
    ({}, "fal_webhook=ftp%3A%2F%2Fx", "webhook_url"),
])
def test_a_bad_value_is_refused_naming_what_is_wrong(
        headers: dict[str, str], query: str, names: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=names):
        submit_options(request(headers, query))
