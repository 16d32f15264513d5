"""One app's queue of waiting work: priority, then FIFO by sequence number.

Positions are exact: `position(item)` is the number of items that would be dispatched
before it. Removal from the head is O(1) amortised; lookups of a position are O(log n).
"""

from __future__ import annotations

import bisect

from falrt.server.state.work import QueuedRequest, Signal, WorkItem
from falrt.store.records import Priority


class _Lane:
    """Sequence numbers of one priority, sorted, with a moving head."""

    __slots__ = ("_head", "_seqs")

    def __init__(self) -> None:
        self._seqs: list[int] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._seqs) - self._head

    def add(self, seq: int) -> None:
        if self._seqs and seq < self._seqs[-1]:
            bisect.insort(self._seqs, seq, lo=self._head)
        else:
            self._seqs.append(seq)

    def first(self) -> int | None:
        return self._seqs[self._head] if len(self) else None

    def rank(self, seq: int) -> int:
        return bisect.bisect_left(self._seqs, seq, lo=self._head) - self._head

    def remove(self, seq: int) -> None:
        index = bisect.bisect_left(self._seqs, seq, lo=self._head)
        if index == self._head:
            self._head += 1
            if self._head > 1024 and self._head * 2 > len(self._seqs):
                del self._seqs[: self._head]
                self._head = 0
        else:
            del self._seqs[index]

    def seqs(self) -> list[int]:
        return self._seqs[self._head :]


class AppQueue:
    """Waiting work of one app. `changed` fires whenever positions may have moved."""

    def __init__(self) -> None:
        self._lanes = {Priority.NORMAL: _Lane(), Priority.LOW: _Lane()}
        self._items: dict[int, WorkItem] = {}
        self.changed = Signal()
        # Waiting direct calls and realtime sessions (not stored: they run only here).
        self.direct = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: WorkItem) -> bool:
        return self._items.get(item.seq) is item

    def push(self, item: WorkItem) -> None:
        self._items[item.seq] = item
        self._lanes[item.priority].add(item.seq)
        self.direct += not isinstance(item, QueuedRequest)
        self.changed.fire()

    def peek(self) -> WorkItem | None:
        if not self._items:
            return None
        for lane in self._lanes.values():
            seq = lane.first()
            if seq is not None:
                return self._items[seq]
        return None

    def remove(self, item: WorkItem) -> bool:
        """Takes `item` out of the queue; False when it was not queued."""
        if item not in self:
            return False
        del self._items[item.seq]
        self._lanes[item.priority].remove(item.seq)
        self.direct -= not isinstance(item, QueuedRequest)
        self.changed.fire()
        return True

    def position(self, item: WorkItem) -> int:
        ahead = self._lanes[item.priority].rank(item.seq)
        if item.priority is Priority.LOW:
            ahead += len(self._lanes[Priority.NORMAL])
        return ahead

    def lengths(self) -> dict[Priority, int]:
        """How many items wait at each priority."""
        return {priority: len(lane) for priority, lane in self._lanes.items()}

    def items(self) -> list[WorkItem]:
        """All waiting items in dispatch order."""
        return [self._items[s] for lane in self._lanes.values() for s in lane.seqs()]
