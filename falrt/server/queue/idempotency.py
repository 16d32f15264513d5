"""Idempotency keys: the same key returns the same request, even while the first Submit
with that key is still storing it.

`reserve(key)` either returns the request id an earlier Submit claimed for `key`, or waits
for a Submit with that key still in progress, or reserves `key` for the caller (None), who
then claims it with the new id (`claim`) and releases the reservation (`settle`) whatever
happens. Keys of requests no longer in memory are found in the store.
"""

from __future__ import annotations

import asyncio


class IdempotencyKeys:
    """Loop-affine map of keys to request ids, with in-progress reservations."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def reserve(self, key: str) -> str | None:
        while (pending := self._pending.get(key)) is not None:
            await asyncio.shield(pending)
        if key in self._ids:
            return self._ids[key]
        self._pending[key] = asyncio.get_running_loop().create_future()
        return None

    def claim(self, key: str, request_id: str) -> None:
        self._ids[key] = request_id

    def settle(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    def forget(self, key: str, request_id: str) -> None:
        if self._ids.get(key) == request_id:
            del self._ids[key]
