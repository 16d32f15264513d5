"""Limits (falrt/limits.py): where a log line is cut, in the runner and in the server, how
many lines and bytes a request keeps, and which payloads travel by file reference."""

from __future__ import annotations

import pytest
from falrt.shim.logcapture import LogTarget

from falrt.limits import (
    LOG_BYTES,
    LOG_LINE_BYTES,
    LOG_LINES,
    PAYLOAD_REF_BYTES,
    by_reference,
    cut_line,
)
from falrt.server.state.work import QueuedRequest
from falrt.store.records import LogRecord, Priority
from falrt.v1 import runner_pb2

pytestmark = pytest.mark.unit


def captured() -> tuple[LogTarget, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []

    def emit(message: runner_pb2.RunnerMessage) -> None:
        lines.append((message.log.line.source, message.log.line.message))

    return LogTarget("r-1", emit), lines


def test_a_short_line_is_kept_whole_and_a_long_one_is_cut_saying_how_long_it_was() -> None:
    assert cut_line("hello") == "hello"
    cut = cut_line("é" * 40_000)  # 80,000 bytes
    assert len(cut.encode()) <= LOG_LINE_BYTES
    assert cut.endswith(f"[falrt: line cut to {LOG_LINE_BYTES} bytes; it had 80000]")
    assert cut.startswith("é" * 100)


def test_the_runner_drops_the_rest_of_an_endless_line_and_goes_on_after_its_newline() -> None:
    target, lines = captured()
    for _ in range(70):
        target.write("stdout", "x" * 1_000_000)  # 70 MB without a newline
    target.write("stdout", "y\nnext\npartial")
    target.flush()
    assert [len(m.encode()) <= LOG_LINE_BYTES for _, m in lines] == [True] * 3
    assert lines[0][1].endswith("it had 70000001]") and lines[0][1].startswith("xxx")
    assert lines[1:] == [("stdout", "next"), ("stdout", "partial")]


def request() -> QueuedRequest:
    return QueuedRequest(request_id="q-1", app_name="a", path="/", input=b"{}",
                         content_type="application/json", priority=Priority.NORMAL, seq=1)


def test_a_request_keeps_at_most_its_byte_limit_of_logs_and_says_when_it_drops() -> None:
    item = request()
    line = "z" * 60_000
    added = [item.add_log(LogRecord(1.0, line, "stdout")) for _ in range(200)]
    kept = sum(len(r.message.encode()) for r in item.logs)
    assert kept <= LOG_BYTES + 200
    assert item.logs[-1].source == "falrt" and "reached its limit" in item.logs[-1].message
    assert added.count(True) == len(item.logs) and item.logs_dropped == 200 - len(item.logs) + 1


def test_a_request_keeps_at_most_its_line_limit_and_cuts_what_a_runner_did_not() -> None:
    item = request()
    assert item.add_log(LogRecord(1.0, "w" * 100_000, "stdout"))
    assert len(item.logs[0].message.encode()) <= LOG_LINE_BYTES
    for n in range(LOG_LINES + 5):
        item.add_log(LogRecord(1.0, str(n), "stdout"))
    assert len(item.logs) == LOG_LINES and "reached its limit" in item.logs[-1].message


@pytest.mark.parametrize(("size", "threshold", "expected"), [
    (1024 * 1024, 1024 * 1024, False),  # at the threshold: inline
    (1024 * 1024 + 1, 1024 * 1024, True),
    (0, 1024 * 1024, False),
    (10 ** 12, 0, False),  # 0: always inline
    (5, -1, False),
])
def test_a_payload_travels_by_reference_only_over_a_positive_threshold(
    size: int, threshold: int, expected: bool,
) -> None:
    assert by_reference(size, threshold) is expected


def test_the_default_threshold_is_one_mib() -> None:
    assert PAYLOAD_REF_BYTES == 1024 * 1024
    assert by_reference(PAYLOAD_REF_BYTES + 1) and not by_reference(PAYLOAD_REF_BYTES)
