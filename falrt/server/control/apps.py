"""Apps as the control plane changes them: load, activate a revision, scale, delete.

Everything here runs on the server's event loop. A change is stored first (where it is
stored), then applied to the apps both planes share: the fleet retires or stops runners,
and the dispatcher hands queued work to the runners that now serve.
"""

from __future__ import annotations

import msgspec

from falrt import errors
from falrt.names import MAIN
from falrt.server.fleet.fleet import Fleet
from falrt.server.queue.dispatch import Dispatcher
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import (
    Apps,
    AppState,
    EffectiveSettings,
    check_config,
    set_fields,
    with_overrides,
)
from falrt.server.state.runners import ALIVE_STATES, RunnerState
from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.records import AppConfig, AppRecord, Revision


class AppControl:
    """The control plane's operations on apps. See the module docstring."""

    def __init__(
        self, apps: Apps, store: Store, fleet: Fleet, scheduler: Scheduler,
        dispatcher: Dispatcher, settings: ServerSettings,
    ) -> None:
        self._apps = apps
        self._store = store
        self._fleet = fleet
        self._scheduler = scheduler
        self._dispatcher = dispatcher
        self._settings = settings

    async def load(self) -> None:
        """Activates every stored app's live revision (at startup, before its requests)."""
        for record in await self._store.list_apps():
            revision = await self._store.get_revision(record.revision_id)
            if revision is not None:
                self.activate(record, revision)

    def get(self, name: str) -> AppState:
        """The app named `name`. Raises NotFoundError."""
        app = self._apps.get(name)
        if app is None:
            raise errors.NotFoundError(
                f"no app named {errors.quote(name)}; `falrt apps list` shows the apps")
        return app

    def activate(self, record: AppRecord, revision: Revision) -> AppState:
        """Makes `revision` the app's live one; runners of older revisions are retired."""
        settings = self.resolve(revision.config, record.scale)
        app = self._apps.get(record.name)
        if app is None:
            app = AppState(record, revision, settings)
            self._apps.put(app)
        else:
            app.switch(record, revision, settings)
        self._fleet.retire_old_revisions(app)
        self._fleet.wake()
        self._dispatcher.dispatch(app)  # a rolling deploy's runner is ready and waiting for work
        return app

    def resolve(self, config: AppConfig, scale: AppConfig) -> EffectiveSettings:
        """The settings a revision's config has under `falrt apps scale` overrides."""
        return EffectiveSettings.resolve(with_overrides(config, scale),
                                         self._settings.app_defaults)

    async def scale(self, name: str, changes: AppConfig) -> AppState:
        """`falrt apps scale`: new overrides of the app's scaling settings, in force at once
        (and stored). Raises NotFoundError, or InvalidArgumentError for bad settings."""
        app = self.get(name)
        if not set_fields(changes):
            raise errors.InvalidArgumentError(
                "nothing to change: give at least one scaling setting (see `falrt apps scale "
                "--help`)")
        scale = AppConfig(**{**set_fields(app.record.scale), **set_fields(changes)})  # type: ignore[arg-type]
        check_config(with_overrides(app.revision.config, scale))
        await self._store.set_scale(name, scale)
        self.rescale(msgspec.structs.replace(app.record, scale=scale))
        return app

    def rescale(self, record: AppRecord) -> None:
        """Applies an app's new scale overrides (its revision unchanged)."""
        app = self._apps.get(record.name)
        if app is None:
            return
        app.record, app.settings = record, self.resolve(app.revision.config, record.scale)
        self._fleet.wake()
        self._dispatcher.dispatch(app)

    async def environment(self, name: str) -> str:
        """The environment's name ("" is main). Raises NotFoundError when it does not exist."""
        name = name or MAIN
        if name != MAIN and name not in {e.name for e in await self._store.list_environments()}:
            raise errors.NotFoundError(
                f"no environment {errors.quote(name)}; create it with `falrt envs create "
                f"{name if len(name) <= errors.QUOTE_CHARS else 'NAME'}`")
        return name

    async def delete(self, name: str, *, stored: bool = True) -> None:
        """Deletes an app with its queue; `stored=False` when another server deleted it."""
        app = self._apps.pop(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {errors.quote(name)}")
        self._scheduler.app_deleted(app)
        self._fleet.stop_app(name)
        if stored:
            await self._store.delete_app(name)

    def rollout(self, name: str, *, force: bool) -> tuple[list[str], list[str]]:
        """`falrt apps rollout`: replaces every runner of the live revision (graceful: a
        replacement first for each, which it drains for once ready) or kills them (force).
        Returns the runners replaced and their replacements."""
        app = self.get(name)
        old = [r for r in self._fleet.runners_of(app.name)
               if r.revision_id == app.revision.revision_id
               and r.state in ALIVE_STATES | {RunnerState.CRASH_BACKOFF}]
        if force:
            for runner in old:
                runner.last_error = "killed by `falrt apps rollout --force`"
                self._fleet.kill(runner)
            return [r.runner_id for r in old], []
        return [r.runner_id for r in old], [self._fleet.replace(r).runner_id for r in old]


__all__ = ["AppControl"]
