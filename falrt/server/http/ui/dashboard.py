"""What the dashboard reads besides the gateway's planes, and the one task it owns.

Built in `falrt/server/main.py` when the server has an HTTP listener and handed to the
`Gateway`; `start` after the listeners serve, `close` after they closed (idempotent).
The dashboard only reads: it never changes an app, a runner or a request (the playground
changes things through the public queue and direct APIs, as any caller does).
"""

from __future__ import annotations

from collections.abc import Iterator

from falrt.server.fleet.fleet import Fleet
from falrt.server.http.ui.history import History, Sampler
from falrt.server.state.apps import Apps
from falrt.server.state.runners import RunnerHandle
from falrt.store.base import Store
from falrt.store.records import RequestRecord


class Dashboard:
    """The fleet's runners, the store's request times, and the charts' history."""

    def __init__(self, apps: Apps, fleet: Fleet, store: Store) -> None:
        self._fleet = fleet
        self._store = store
        self.sampler = Sampler(apps, self.runners, History())

    def start(self) -> None:
        self.sampler.start()

    async def close(self) -> None:
        await self.sampler.close()

    def runners(self) -> Iterator[RunnerHandle]:
        """Every runner this server runs, then the latest ended ones."""
        yield from list(self._fleet.runners.values())
        yield from list(self._fleet.ended)

    async def request_record(self, request_id: str) -> RequestRecord | None:
        """The stored row of a request (its submit and completion times); None when it is
        not stored (yet: writes are batched)."""
        return await self._store.get_request(request_id)
