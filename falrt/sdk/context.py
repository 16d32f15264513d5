"""The request a handler is serving, as seen from inside the handler.

`RequestContext` is what `App.current_request` returns. It lives in a `ContextVar`, so it is
right in async handlers (each request runs in its own task) and in sync handlers running in
worker threads (the runner copies the context into the thread). Only the runner shim creates
and binds contexts; user code only reads them.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

__all__ = ["RequestContext", "current_request", "request_var"]


class RequestContext:
    """One request being served: its id, its endpoint path and whether it was cancelled.

    `cancelled` turns true (once, never back) when the server cancels the request. A sync
    handler polls it to stop early; an async handler is cancelled by the runner instead
    (it sees `asyncio.CancelledError`), but may poll it too. Thread-safe.

    A handler may also tell the server what to do when it fails (fal's `X-Fal-Needs-Retry`
    and `x-fal-stop-runner`): set `needs_retry` to True (retry this request on a runner,
    within the 10-attempt limit) or False (never retry it) before raising, and
    `stop_runner` to True to have this runner replaced once the request ends (False keeps
    it). None leaves the decision to the server's rules. `needs_retry` counts only when the
    handler fails.
    """

    __slots__ = ("_cancel", "needs_retry", "path", "request_id", "stop_runner")

    def __init__(self, request_id: str, path: str, cancel: threading.Event | None = None) -> None:
        self.request_id = request_id
        self.path = path
        self._cancel = cancel if cancel is not None else threading.Event()
        self.needs_retry: bool | None = None
        self.stop_runner: bool | None = None

    @property
    def cancelled(self) -> bool:
        """True once the request has been cancelled."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks the calling thread until the request is cancelled or `timeout` passes.

        Returns `cancelled`. Meant for sync handlers that wait on something else anyway.
        """
        return self._cancel.wait(timeout)

    def __repr__(self) -> str:
        return (
            f"RequestContext(request_id={self.request_id!r}, path={self.path!r}, "
            f"cancelled={self.cancelled})"
        )


request_var: ContextVar[RequestContext | None] = ContextVar("falrt_request", default=None)


def current_request() -> RequestContext | None:
    """The request the calling task or thread is serving, or None outside a request."""
    return request_var.get()
