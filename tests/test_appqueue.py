"""Queue order and exact positions: priority first, FIFO within a priority."""

from __future__ import annotations

import pytest

from falrt.server.state.appqueue import AppQueue
from falrt.server.state.work import WorkItem
from falrt.store.records import Priority

pytestmark = pytest.mark.unit


def item(seq: int, priority: Priority = Priority.NORMAL) -> WorkItem:
    return WorkItem(request_id=f"r{seq}", app_name="a", path="/", input=b"", content_type="",
                    priority=priority, seq=seq)


def test_positions_count_items_ahead_and_low_waits_behind_normal() -> None:
    queue = AppQueue()
    low, n1, n2 = item(1, Priority.LOW), item(2), item(3)
    for i in (low, n1, n2):
        queue.push(i)
    assert [queue.position(i) for i in (n1, n2, low)] == [0, 1, 2]
    assert queue.items() == [n1, n2, low]


def test_removing_the_head_and_the_middle_keeps_positions_exact() -> None:
    queue = AppQueue()
    items = [item(s) for s in range(1, 2001)]
    for i in items:
        queue.push(i)
    for head in items[:1500]:
        assert queue.peek() is head
        assert queue.remove(head)
    assert queue.remove(items[1600])
    assert not queue.remove(items[1600])
    assert queue.position(items[1500]) == 0
    assert queue.position(items[1700]) == 199
    assert len(queue) == 499


def test_a_requeued_item_goes_back_to_its_place() -> None:
    queue = AppQueue()
    first, second = item(1), item(2)
    queue.push(second)
    queue.push(first)  # a retried request keeps its original sequence number
    assert queue.peek() is first
    assert queue.position(second) == 1
