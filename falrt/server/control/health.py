"""Whether the server, and each app, can serve: the rules behind the gRPC health service and
the HTTP `/healthz` (docs/observability.md, "Health").

The server is healthy while
- its store can write (`StoreHealth`: after a write failed for lack of space, until a probe
  writes again), and
- its scaling loop runs: it has started, has not ended, and has made a pass within
  `fleet.STALL_S` of being woken (`Fleet.scaling_problem`).

An app is healthy while the server is and
- a runner of its live revision takes work (IDLE or RUNNING), or else
- its runners are not failing to start: no crash backoff and no lack of capacity
  (`AppState.last_startup_error`, cleared by the next runner that becomes ready). An app
  with no runner and nothing wrong counts as healthy: it starts one on demand.

`ServerHealth` reads these from the planes when asked; it holds no state. Loop-affine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from falrt.server.fleet.fleet import Fleet
from falrt.server.queue.store_health import StoreHealth
from falrt.server.state.apps import Apps, AppState
from falrt.server.state.runners import SERVING_STATES, RunnerHandle

# The health service name of an app: this prefix and the app's full name.
APP_SERVICE_PREFIX = "falrt.app/"


def app_problem(app: AppState, runners: Iterable[RunnerHandle]) -> str:
    """Why `app` cannot serve now ("" when it can), by the rules of the module docstring;
    `runners` are the app's (of any revision)."""
    live = app.revision.revision_id
    if any(r.revision_id == live and r.state in SERVING_STATES for r in runners):
        return ""
    return app.waiting_reason()


@dataclass(frozen=True)
class Verdict:
    """The server's health: why it cannot serve (empty: it can), and each app's."""

    problems: tuple[str, ...]
    apps: dict[str, str]  # app name -> why it cannot serve ("" when it can)

    @property
    def serving(self) -> bool:
        return not self.problems

    def app_serving(self, name: str) -> bool | None:
        """Whether the app can serve (never while the server cannot); None: no such app."""
        problem = self.apps.get(name)
        return None if problem is None else self.serving and not problem


class ServerHealth:
    """Evaluates the rules on the planes' current state."""

    def __init__(self, store_health: StoreHealth, fleet: Fleet, apps: Apps) -> None:
        self._store_health = store_health
        self._fleet = fleet
        self._apps = apps

    def problems(self) -> tuple[str, ...]:
        found = []
        if not self._store_health.writable:
            found.append("the store cannot write (no space left)")
        if scaling := self._fleet.scaling_problem(time.monotonic()):
            found.append(scaling)
        return tuple(found)

    def check(self) -> Verdict:
        by_app: dict[str, list[RunnerHandle]] = {}
        for runner in self._fleet.runners.values():
            by_app.setdefault(runner.app_name, []).append(runner)
        apps = {app.name: app_problem(app, by_app.get(app.name, ())) for app in self._apps}
        return Verdict(self.problems(), apps)


__all__ = ["APP_SERVICE_PREFIX", "ServerHealth", "Verdict", "app_problem"]
