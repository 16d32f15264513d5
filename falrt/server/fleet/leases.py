"""Which apps this server scales for the whole cluster, and the runner slots it holds.

Alone on its store, a server leads every app and starts runners freely. On a shared store
(docs/stores.md, "Scaling across servers"), one server at a time holds each app's scaling
lease and leads it; the cluster (falrt/server/control/cluster.py) renews the leases and
tells the fleet what it holds (`update`). Every runner a server starts first takes one of
the app's `max_concurrency` runner slots in the store (`take_slot`), whichever server leads,
and gives it back when it ends (`free_slot`): that is what keeps max_concurrency for the app
as a whole. Loop-affine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class RunnerSlots(Protocol):
    """The store's side of runner slots (`SharedStore`)."""

    def take_runner_slot(
        self, app_name: str, runner_id: str, limit: int | None,
    ) -> Awaitable[bool]:
        """Takes a slot for `runner_id` when fewer than `limit` of the app's slots are held
        by live servers (None: in any case); False otherwise (this server then waits)."""

    def free_runner_slot(self, runner_id: str) -> Awaitable[None]:
        """Gives the runner's slot back (idempotent)."""


@dataclass(frozen=True)
class AppLease:
    """What this server knows of an app it leads, as of the last renewal."""

    remote_alive: int = 0  # runner slots other live servers hold
    remote_waiting: int = 0  # other live servers waiting for a slot


NO_LEASE = AppLease()  # (an app this server does not lead, or leads alone)

class ScalingLeases:
    """The apps this server leads, and the runner slots its runners hold."""

    def __init__(self, slots: RunnerSlots | None) -> None:
        self._slots = slots  # None: alone on its store
        self._held: dict[str, AppLease] = {}
        self._asked: set[str] = set()  # the apps the last renewal asked for
        # Set when the scaling loop meets an app the last renewal did not ask for (a new
        # deploy): the cluster renews at once rather than at its next turn.
        self.new_app = asyncio.Event()
        self._holding: set[str] = set()  # runner ids that hold a slot
        self._starting: dict[str, int] = {}  # starts waiting for their slot, by app

    @property
    def shared(self) -> bool:
        return self._slots is not None

    def leads(self, app_name: str) -> bool:
        """Whether this server makes the app's scaling decisions (always, alone)."""
        if self._slots is None or app_name in self._held:
            return True
        if app_name not in self._asked:
            self.new_app.set()
        return False

    def lease(self, app_name: str) -> AppLease:
        """The other servers' runners and waits for an app this server leads."""
        return self._held.get(app_name, NO_LEASE)

    def update(self, held: Mapping[str, AppLease], asked: Iterable[str]) -> bool:
        """The apps this server leads now, of those the cluster's renewal `asked` for
        (none when it failed, so a server cut off from the store leads nothing). Returns
        whether anything changed."""
        self._asked = set(asked)
        changed = dict(held) != self._held
        gained, lost = set(held) - set(self._held), set(self._held) - set(held)
        if gained or lost:
            log.info("scaling leases: took %s, lost %s", sorted(gained), sorted(lost))
        self._held = dict(held)
        return changed

    def starting(self, app_name: str) -> int:
        """Starts of the app waiting for their slot: the scaling loop counts them as
        starting runners."""
        return self._starting.get(app_name, 0)

    def reserve(self, app_name: str) -> None:
        self._starting[app_name] = self._starting.get(app_name, 0) + 1

    def unreserve(self, app_name: str) -> None:
        left = self._starting.get(app_name, 0) - 1
        if left > 0:
            self._starting[app_name] = left
        else:
            self._starting.pop(app_name, None)

    async def take_slot(self, app_name: str, runner_id: str, limit: int | None) -> bool:
        """Takes a runner slot for `runner_id` (at once when it holds one, or alone on the
        store); False when the app's slots are all held."""
        if self._slots is None or runner_id in self._holding:
            return True
        if not await self._slots.take_runner_slot(app_name, runner_id, limit):
            return False
        self._holding.add(runner_id)
        return True

    async def free_slot(self, runner_id: str) -> None:
        """Gives back the slot of a runner that ended (nothing when it held none)."""
        if self._slots is None or runner_id not in self._holding:
            return
        self._holding.discard(runner_id)
        await self._slots.free_runner_slot(runner_id)


__all__ = ["AppLease", "RunnerSlots", "ScalingLeases"]
