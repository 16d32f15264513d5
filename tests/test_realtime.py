"""Realtime sessions on a real server and runner: a stream in, a stream out, on one runner."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from falrt import errors
from falrt.client import SyncClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

APP = "tests/apps/chat.py::Chat"


@pytest.fixture(scope="module")
def chat(server: ServerProcess) -> str:
    return server.deploy(APP)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.address) as c:
        yield c


def test_a_session_answers_each_input_in_order_on_one_runner(
    client: SyncClient, chat: str
) -> None:
    replies = list(client.realtime(chat, [{"text": t} for t in ("a", "b", "c")], path="/chat"))
    assert [(r["text"], r["n"]) for r in replies] == [("A", 1), ("B", 2), ("C", 3)]
    assert len({r["runner"] for r in replies}) == 1


def test_a_thousand_messages_come_back_in_order(client: SyncClient, chat: str) -> None:
    lines = ({"text": f"m{n}"} for n in range(1000))
    replies = [(r["text"], r["n"]) for r in client.realtime(chat, lines, path="/chat")]
    assert replies == [(f"M{n}", n + 1) for n in range(1000)]


def test_a_caller_faster_than_the_handler_is_slowed_down_not_failed(
    client: SyncClient, chat: str
) -> None:
    """300 inputs sent at once to a handler that reads one every 2 ms: more than the
    runner's buffer of 64 would hold, so backpressure must hold the caller back."""
    lines = ({"text": f"s{n}", "pause_s": 0.002} for n in range(300))
    replies = [r["n"] for r in client.realtime(chat, lines, path="/chat")]
    assert replies == list(range(1, 301))


def test_outputs_stream_back_while_inputs_still_flow(client: SyncClient, chat: str) -> None:
    """Each input is sent only after the reply to the one before arrived: both directions
    are live at once."""
    answered: queue.Queue[str] = queue.Queue()

    def lines() -> Iterator[dict[str, str]]:
        for text in ("one", "two", "three"):
            yield {"text": text}
            assert answered.get(timeout=30) == text.upper()

    replies = []
    for reply in client.realtime(chat, lines(), path="/chat"):
        replies.append(reply["text"])
        answered.put(reply["text"])
    assert replies == ["ONE", "TWO", "THREE"]


def test_two_sessions_share_a_runner_and_a_handler_error_ends_only_its_session(
    client: SyncClient, chat: str
) -> None:
    results: dict[str, object] = {}
    gate = threading.Event()

    def slow_lines() -> Iterator[dict[str, str]]:
        yield {"text": "first"}
        gate.wait(30)  # stays open while the other session fails
        yield {"text": "second"}

    def run() -> None:
        results["ok"] = [r["text"] for r in client.realtime(chat, slow_lines(), path="/chat")]

    thread = threading.Thread(target=run)
    thread.start()
    with pytest.raises(errors.RunnerServerError, match="cannot answer 'boom'"):
        list(client.realtime(chat, [{"text": "x"}, {"text": "boom", "fail": True}],
                             path="/chat"))
    gate.set()
    thread.join(timeout=60)
    assert results["ok"] == ["FIRST", "SECOND"]
    assert client.run(chat, {"text": "still here"})["text"] == "still here"


def test_a_caller_that_leaves_frees_the_slot(client: SyncClient, chat: str) -> None:
    for _ in range(3):  # more sessions than the runner's two slots, each left early
        replies = client.realtime(chat, iter([{"text": "hi"}] + [{"text": "more"}] * 100),
                                  path="/chat")
        assert next(replies)["text"] == "HI"
        replies.close()  # cancels the stream; the runner ends the session
    again = list(client.realtime(chat, [{"text": "after"}], path="/chat"))
    assert again[0]["text"] == "AFTER"


def test_the_wrong_kind_of_call_is_invalid_argument(client: SyncClient, chat: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="not a realtime endpoint"):
        list(client.realtime(chat, [{"text": "x"}], path="/"))
    with pytest.raises(errors.InvalidArgumentError, match="is a realtime endpoint"):
        client.run(chat, {"text": "x"}, path="/chat")


def test_a_realtime_input_over_the_payload_limit_ends_only_its_session(
    client: SyncClient, chat: str
) -> None:
    with pytest.raises(errors.PayloadTooLargeError, match="the realtime input is 6710"):
        list(client.realtime(chat, [{"text": "a"}, {"text": "x" * 67_100_000}], path="/chat"))
    replies = list(client.realtime(chat, [{"text": "after"}], path="/chat"))
    assert [r["text"] for r in replies] == ["AFTER"]
