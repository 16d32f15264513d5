"""The deploy pipeline: receive and verify a bundle, build its environment, make a revision
live. It yields plain progress events; the Control servicer turns them into messages.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from falrt import bundle, errors
from falrt.backends.environments import Environments
from falrt.names import MAIN, check_app_name, check_environment, full_name
from falrt.server.control.apps import AppControl
from falrt.server.fleet.fleet import Fleet
from falrt.server.state.apps import Apps, check_config, kept_on_deploy, with_overrides
from falrt.settings import ServerSettings
from falrt.store.base import SharedStore, Store
from falrt.store.records import AppConfig, AppRecord, EndpointRecord, Revision
from falrt.vocabulary import AppAuth, DeployStrategy, names

ENTRYPOINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*$")


class DeployStage(enum.Enum):
    """Where a deploy is (DeployStage in control.proto)."""

    UPLOAD = "UPLOAD"
    BUILD = "BUILD"
    ROLLOUT = "ROLLOUT"
    DONE = "DONE"


@dataclass(frozen=True)
class DeployPlan:
    """What the client asked to deploy (the DeployHeader, converted)."""

    app_name: str
    entrypoint: str
    bundle_sha256: str
    bundle_size: int
    config: AppConfig
    endpoints: tuple[EndpointRecord, ...]
    message: str
    reset_scale: bool = False
    strategy: DeployStrategy = DeployStrategy.ROLLING
    annotations: dict[str, str] = field(default_factory=dict)
    environment: str = MAIN
    no_cache: bool = False
    wait: bool = False  # until a runner of the new revision is ready (or failed to start)
    force: bool = False  # a new revision even when nothing changed

    @property
    def name(self) -> str:
        """The app's full name: `x`, or `x--staging` outside main."""
        return full_name(self.app_name, self.environment)


@dataclass(frozen=True)
class Progress:
    stage: DeployStage
    message: str
    fraction: float = 0.0


@dataclass(frozen=True)
class BuildLog:
    line: str


@dataclass(frozen=True)
class Deployed:
    endpoint_id: str
    app_name: str
    revision_id: str
    unchanged: bool = False  # the live revision already served this; nothing was made


DeployEvent = Progress | BuildLog | Deployed


class Deployer:
    """Deploys and rollbacks. Loop-affine; one deploy's blocking work (unpacking, builds)
    runs in threads."""

    def __init__(
        self, apps: Apps, control: AppControl, fleet: Fleet, store: Store,
        shared: SharedStore | None, environments: Environments, settings: ServerSettings,
    ) -> None:
        self._apps = apps
        self._control = control
        self._fleet = fleet
        self._store = store
        self._shared = shared
        self._environments = environments
        self._settings = settings

    async def deploy(
        self, plan: DeployPlan, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[DeployEvent]:
        """Runs the whole pipeline. Raises InvalidArgumentError for a bad plan or bundle."""
        self._check(plan)
        await self._control.environment(plan.environment)
        data = bytearray()
        async for event in self._receive(plan, chunks, data):
            yield event
        if (live := self._unchanged(plan)) is not None:
            async for event in self._keep(live, wait=plan.wait):
                yield event
            return
        await asyncio.to_thread(
            bundle.unpack, bytes(data), self._settings.bundles_dir / plan.bundle_sha256,
            max_bytes=self._settings.max_bundle_bytes,
        )
        if self._shared is not None:  # the other servers fetch it from the store
            await self._shared.put_bundle(plan.bundle_sha256, bytes(data))
        module = plan.entrypoint.partition(":")[0]
        module_file = self._settings.bundles_dir / plan.bundle_sha256 / f"{module}.py"
        if not await asyncio.to_thread(module_file.is_file):
            raise errors.InvalidArgumentError(f"the bundle has no module {module}.py")
        yield Progress(DeployStage.BUILD, "building the environment")
        built: list[str] = []
        async for event in self._build(plan.config, built, no_cache=plan.no_cache):
            yield event
        env_key = built[0]
        revision = Revision(
            revision_id=f"rev-{uuid.uuid4().hex[:12]}", app_name=plan.name,
            entrypoint=plan.entrypoint, bundle_sha256=plan.bundle_sha256, env_key=env_key,
            config=plan.config, endpoints=plan.endpoints, message=plan.message,
            created_at=time.time(), annotations=dict(plan.annotations),
        )
        existing = self._apps.get(plan.name)
        scale = kept_on_deploy(existing.record.scale if existing else AppConfig(),
                               reset=plan.reset_scale)
        auth = plan.config.app_auth or AppAuth.PRIVATE  # fal: deploys are private unless told
        async for event in self._switch(revision, scale, plan.strategy, auth, wait=plan.wait):
            yield event

    def _unchanged(self, plan: DeployPlan) -> Revision | None:
        """The live revision when `plan` would change nothing: same bundle, entrypoint,
        endpoints, settings (environment included) and auth, no `apps scale` setting to drop,
        and neither --force nor --no-cache asked for."""
        existing = self._apps.get(plan.name)
        if existing is None or plan.force or plan.no_cache:
            return None
        live = existing.revision
        auth = plan.config.app_auth or AppAuth.PRIVATE
        if kept_on_deploy(existing.record.scale, reset=plan.reset_scale) != existing.record.scale:
            return None  # the deploy drops settings `falrt apps scale` set
        same = (live.bundle_sha256 == plan.bundle_sha256 and live.entrypoint == plan.entrypoint
                and live.endpoints == plan.endpoints and live.config == plan.config
                and existing.record.auth == auth)
        return live if same else None

    async def _keep(self, live: Revision, *, wait: bool) -> AsyncIterator[DeployEvent]:
        """Ends a deploy that changed nothing: says which revision already serves it."""
        if wait:
            yield Progress(DeployStage.ROLLOUT, f"waiting for a runner of {live.revision_id}")
            runner_id = await self._first_runner(live)
            yield Progress(DeployStage.ROLLOUT, f"runner {runner_id} is ready")
        endpoint_id = f"{self._settings.owner}/{live.app_name}"
        yield Progress(DeployStage.DONE,
                       f"unchanged: revision {live.revision_id} already serves this", 1.0)
        yield Deployed(endpoint_id, live.app_name, live.revision_id, unchanged=True)

    async def rollback(
        self, app_name: str, revision_id: str, strategy: DeployStrategy, auth: str = ""
    ) -> AsyncIterator[DeployEvent]:
        """Makes an earlier revision of the app live again, without a rebuild: its bundle
        and environment are still here. Runtime-tunable scale overrides are kept,
        code-specific settings come from that revision (fal's set-rev)."""
        app = self._control.get(app_name)
        target = await self._store.get_revision(revision_id)
        if target is None or target.app_name != app_name:
            raise errors.NotFoundError(
                f"app {app_name!r} has no revision {errors.quote(revision_id)}; `falrt apps "
                f"revisions {app_name}` lists them")
        if target.revision_id == app.revision.revision_id:
            raise errors.FailedPreconditionError(f"{revision_id} is already live")
        bundle_dir = self._settings.bundles_dir / target.bundle_sha256
        if not await asyncio.to_thread(bundle_dir.is_dir):
            raise errors.FailedPreconditionError(
                f"the code bundle of {revision_id} is no longer on this server; deploy it again")
        yield Progress(DeployStage.BUILD, "checking the revision's environment")
        async for event in self._build(target.config, []):
            yield event
        _check_auth(auth or app.record.auth)
        async for event in self._switch(target, kept_on_deploy(app.record.scale, reset=False),
                                        strategy, auth or app.record.auth):
            yield event

    async def _switch(
        self, revision: Revision, scale: AppConfig, strategy: DeployStrategy, auth: str,
        *, wait: bool = False,
    ) -> AsyncIterator[DeployEvent]:
        """Makes `revision` live. Rolling (an app that serves already): a runner of the
        revision starts first, and the switch waits until it is ready; if it cannot start,
        the app keeps serving what it served and this raises FailedPreconditionError.
        `wait` (when no rolling runner proved the revision): once live, a runner of it starts
        and this waits until it is ready; StartupFailedError if it fails to start. A revision
        that keeps runners warm (min_concurrency > 0) is waited for so, asked or not: its
        runners start now anyway, and the deploy reports whether they can."""
        check_config(with_overrides(revision.config, scale))
        settings = self._control.resolve(revision.config, scale)
        existing = self._apps.get(revision.app_name)
        candidate = None
        # Rolling needs a runner to wait for; an app allowed none switches at once.
        if (existing is not None and strategy is DeployStrategy.ROLLING
                and settings.scaling.max_concurrency > 0):
            yield Progress(DeployStage.ROLLOUT, f"starting a runner of {revision.revision_id}")
            candidate, error = await self._fleet.start_candidate(existing, revision, settings)
            if error:
                raise errors.FailedPreconditionError(
                    f"the runner of {revision.revision_id} failed to start ({error}); "
                    f"{revision.app_name} keeps serving {existing.revision.revision_id}. Its "
                    f"output: `falrt runners logs {candidate.runner_id}`")
            yield Progress(DeployStage.ROLLOUT, f"runner {candidate.runner_id} is ready; switching")
        else:
            yield Progress(DeployStage.ROLLOUT, f"switching to {revision.revision_id}")
        now = time.time()
        created = existing.record.created_at if existing else now
        record = AppRecord(revision.app_name, revision.revision_id, created, now, scale, auth)
        try:
            await self._store.deploy(revision, record)
        except BaseException:
            if candidate is not None:
                self._fleet.stop(candidate)
            raise
        self._control.activate(record, revision)  # the old revision's runners drain
        wait = wait or settings.scaling.min_concurrency > 0
        if wait and candidate is None and settings.scaling.max_concurrency > 0:
            yield Progress(DeployStage.ROLLOUT, f"waiting for a runner of {revision.revision_id}")
            runner_id = await self._first_runner(revision)
            yield Progress(DeployStage.ROLLOUT, f"runner {runner_id} is ready")
        endpoint_id = f"{self._settings.owner}/{revision.app_name}"
        yield Progress(DeployStage.DONE,
                       f"{endpoint_id} serves revision {revision.revision_id}", 1.0)
        yield Deployed(endpoint_id, revision.app_name, revision.revision_id)

    async def _first_runner(self, revision: Revision) -> str:
        """Starts a runner of the live `revision` and waits until it is ready; its id.
        Raises StartupFailedError with its startup error if it fails to start (the revision
        stays live: its runners go on starting, in fal's CRASH_BACKOFF)."""
        app = self._apps.get(revision.app_name)
        assert app is not None, "the revision was just activated"
        runner, error = await self._fleet.start_candidate(app, revision, app.settings)
        if error:
            raise errors.StartupFailedError(
                f"{revision.app_name} serves revision {revision.revision_id}, but its runner "
                f"failed to start: {error}. Its output: `falrt runners logs {runner.runner_id}`")
        return runner.runner_id

    def _check(self, plan: DeployPlan) -> None:
        try:
            check_app_name(plan.app_name)
            check_environment(plan.environment)
        except ValueError as exc:
            raise errors.InvalidArgumentError(str(exc)) from None
        if plan.config.app_auth:
            _check_auth(plan.config.app_auth)
        if not ENTRYPOINT.match(plan.entrypoint):
            raise errors.InvalidArgumentError(f"invalid entrypoint {errors.quote(plan.entrypoint)}")
        if not 0 < plan.bundle_size <= self._settings.max_bundle_bytes:
            raise errors.InvalidArgumentError(
                f"bundle size {plan.bundle_size} is outside 1..{self._settings.max_bundle_bytes}"
            )
        if not plan.endpoints:
            raise errors.InvalidArgumentError("the app declares no endpoint")
        paths = [e.path for e in plan.endpoints]
        if any(not p.startswith("/") for p in paths) or len(set(paths)) != len(paths):
            raise errors.InvalidArgumentError(
                f"endpoint paths must be unique and start with /: {paths}"
            )
        check_config(plan.config)

    async def _receive(
        self, plan: DeployPlan, chunks: AsyncIterator[bytes], data: bytearray
    ) -> AsyncIterator[DeployEvent]:
        digest = hashlib.sha256()
        reported = 0.0
        async for chunk in chunks:
            if len(data) + len(chunk) > plan.bundle_size:
                raise errors.InvalidArgumentError("the bundle is larger than its header says")
            data.extend(chunk)
            digest.update(chunk)
            fraction = len(data) / plan.bundle_size
            if fraction - reported >= 0.1 or fraction == 1.0:
                reported = fraction
                yield Progress(DeployStage.UPLOAD,
                               f"received {len(data)} of {plan.bundle_size} bytes", fraction)
        if len(data) != plan.bundle_size:
            raise errors.InvalidArgumentError(
                f"the bundle ended after {len(data)} of {plan.bundle_size} bytes"
            )
        if digest.hexdigest() != plan.bundle_sha256:
            raise errors.InvalidArgumentError("the bundle's SHA-256 does not match its header")

    async def _build(
        self, config: AppConfig, result: list[str], *, no_cache: bool = False
    ) -> AsyncIterator[DeployEvent]:
        """Builds the environment, yielding its log lines as they come; appends its key."""
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        async def sink(line: str) -> None:
            await lines.put(line)

        async def build() -> str:
            try:
                return await self._environments.ensure(
                    config.requirements, sink, no_cache=no_cache, dockerfile=config.dockerfile)
            finally:
                await lines.put(None)

        task = asyncio.ensure_future(build())
        try:
            while (line := await lines.get()) is not None:
                yield BuildLog(line)
            result.append(await task)
        finally:
            task.cancel()


def _check_auth(auth: str) -> None:
    if auth not in names(AppAuth):
        raise errors.InvalidArgumentError(
            f"invalid auth {errors.quote(auth)}: use {', '.join(names(AppAuth))}")
