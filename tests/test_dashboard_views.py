"""The dashboard's pure parts: input schema → playground form, the charts' history and
sparklines, and the JSON shapes of runners and requests. No server; `now` is data."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from falrt.server.http.ui.forms import Field, form_fields
from falrt.server.http.ui.history import History, Sample, Sampler, ServedCounter, sparkline
from falrt.server.http.ui.views import history_view, outcome_view, request_view, runner_view
from falrt.server.state.apps import Apps
from falrt.server.state.runners import RunnerHandle, RunnerState
from falrt.server.state.work import QueuedRequest
from falrt.store.records import ErrorRecord, LogRecord, Outcome, Priority, RequestRecord, Status

pytestmark = pytest.mark.unit


class Hello(msgspec.Struct):
    name: str


class Options(msgspec.Struct):
    prompt: str
    steps: int = 20
    scale: float = 7.5
    safe: bool = True
    size: str | None = None
    nested: Hello | None = None
    tags: list[str] = []


def schema(kind: Any) -> str:
    return json.dumps(msgspec.json.schema(kind))


FORMS: list[tuple[str, str, list[Field] | None]] = [
    ("msgspec's $ref to $defs", schema(Hello),
     [Field("name", "string", True, "name")]),
    ("defaults, optional values, nested objects and lists", schema(Options), [
        Field("prompt", "string", True, "prompt"),
        Field("steps", "integer", False, "steps", default="20"),
        Field("scale", "number", False, "scale", default="7.5"),
        Field("safe", "boolean", False, "safe", default="true"),
        Field("size", "string", False, "size", default="null", nullable=True),
        Field("nested", "json", False, "nested", default="null", nullable=True),
        Field("tags", "json", False, "tags", default="[]"),
    ]),
    ("pydantic's enum, title, description and type list", json.dumps({
        "type": "object", "required": ["mode"],
        "properties": {
            "mode": {"enum": ["fast", "good"], "title": "Mode", "description": "how"},
            "seed": {"type": ["integer", "null"]},
        }}), [
        Field("mode", "enum", True, "Mode", description="how", choices=('"fast"', '"good"')),
        Field("seed", "integer", False, "seed", nullable=True),
    ]),
    ("no schema", "", None),
    ("not JSON", "{", None),
    ("not an object", json.dumps({"type": "string"}), None),
    ("an object with no properties", json.dumps({"type": "object"}), None),
    ("a $ref cycle", json.dumps({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}),
     None),
]


@pytest.mark.parametrize(("case", "text", "expected"), FORMS, ids=[c[0] for c in FORMS])
def test_an_input_schema_becomes_the_playgrounds_form(
    case: str, text: str, expected: list[Field] | None,
) -> None:
    assert form_fields(text) == expected


def test_a_sparkline_spans_the_width_and_its_largest_value_touches_the_top() -> None:
    assert sparkline([]) == ""
    assert sparkline([0.0, 2.0, 1.0], width=100, height=10) == "0.0,10.0 50.0,0.0 100.0,5.0"
    assert sparkline([0.0, 0.0], width=10, height=10) == "0.0,10.0 10.0,10.0"
    assert sparkline([3.0], width=10, height=10) == "0.0,0.0 10.0,0.0"


def test_the_history_keeps_the_latest_samples() -> None:
    history = History(kept=2)
    for at in range(3):
        history.add(Sample(at=float(at), queue_depth=at, requests_per_s=0.0, runners=1))
    assert [s.at for s in history.samples()] == [1.0, 2.0]
    view = history_view(history.samples(), 10.0)
    assert view["since"] == 1.0
    assert view["series"]["queue_depth"]["values"] == [1.0, 2.0]
    assert view["series"]["queue_depth"]["last"] == 2.0
    assert history_view([], 10.0)["series"]["runners"] == {
        "values": [], "points": "", "last": 0, "max": 0}


def runner(runner_id: str, served: int = 0) -> RunnerHandle:
    handle = RunnerHandle(runner_id, "hello", "rev", "token", 4, "S")
    handle.served = served
    return handle


def test_requests_finished_count_each_runners_new_work_once() -> None:
    counter = ServedCounter()
    a, b = runner("a", served=5), runner("b")
    assert counter.finished([a, b]) == 5
    a.served, b.served = 7, 1
    assert counter.peek([a, b]) == 3
    assert counter.finished([a, b]) == 3
    assert counter.finished([b]) == 0  # a ended: nothing new
    assert counter.finished([b, runner("c", served=2)]) == 2


def test_a_runners_timeline_has_one_segment_per_state_up_to_now() -> None:
    handle = runner("r")
    handle.transitions.clear()
    handle.first_transition = first = (RunnerState.PENDING, 100.0)
    handle.transitions.extend([first, (RunnerState.SETUP, 101.0),
                               (RunnerState.IDLE, 103.0)])
    view = runner_view(handle, now=110.0)
    assert view["timeline"] == [
        {"state": "PENDING", "start": 100.0, "end": 101.0},
        {"state": "SETUP", "start": 101.0, "end": 103.0},
        {"state": "IDLE", "start": 103.0, "end": 110.0},
    ]
    assert view["gpus"] == [] and view["state"] == "PENDING"


def queued(outcome: Outcome | None, content_type: str = "application/json") -> QueuedRequest:
    item = QueuedRequest(request_id="r1", app_name="hello", path="/",
                         input=b'{"name": "<b>x</b>"}', content_type=content_type,
                         priority=Priority.NORMAL, seq=1)
    item.outcome = outcome
    item.attempts = 1
    if outcome is not None:
        item.status = Status.COMPLETED
    item.add_log(LogRecord(12.5, "greeting <b>x</b>", "stdout"))
    return item


def test_a_requests_page_has_its_times_logs_attempts_and_output() -> None:
    outcome = Outcome(output=b'{"greeting": "Hello"}', content_type="application/json",
                      inference_time_s=0.25)
    record = RequestRecord("r1", "hello", "/", b"", "application/json", Priority.NORMAL, 1,
                           created_at=10.0, completed_at=13.0)
    view = request_view(queued(outcome), record, position=0)
    assert view["status"] == "COMPLETED" and view["attempts"] == 1
    assert view["times"] == {"submitted": 10.0, "completed": 13.0}
    assert view["input"]["value"] == {"name": "<b>x</b>"}
    assert view["logs"] == [{"timestamp": 12.5, "message": "greeting <b>x</b>",
                             "source": "stdout"}]
    assert view["result"] == {"output": {"content_type": "application/json", "size_bytes": 21,
                                         "value": {"greeting": "Hello"}},
                              "inference_time_s": 0.25}
    assert request_view(queued(None), None, 3)["times"] == {"submitted": None,
                                                            "completed": None}


def test_an_output_that_is_not_json_is_summarised_and_an_error_shown() -> None:
    packed = outcome_view(Outcome(output=msgspec.msgpack.encode({"a": 1}),
                                  content_type="application/msgpack"))
    assert packed["output"]["value"] == {"a": 1}
    raw = outcome_view(Outcome(output=b"\x89PNG", content_type="image/png"))
    assert raw["output"] == {"content_type": "image/png", "size_bytes": 4, "value": None}
    failed = outcome_view(Outcome(error=ErrorRecord("runner_server_error", "boom", 13)))
    assert failed == {"error": {"error_type": "runner_server_error", "message": "boom",
                                "traceback": ""}}


def test_a_sample_counts_alive_runners_and_what_they_finished_since_the_last() -> None:
    alive, ended = runner("alive", served=3), runner("ended", served=1)
    ended.set_state(RunnerState.TERMINATED)
    history = History()
    sampler = Sampler(Apps(), lambda: [alive, ended], history)
    first = sampler.sample()
    assert (first.queue_depth, first.runners) == (0, 1)
    alive.served += 2
    assert sampler.current().requests_per_s > 0
    assert history.samples() == [first]  # (current is not kept)
    assert sampler.sample().requests_per_s > 0
    assert sampler.sample().requests_per_s == 0
