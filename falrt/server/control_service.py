"""The public Control service: deploy, apps, runners. Converts at the edge."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from grpc import aio

from falrt import errors
from falrt.names import MAIN, check_environment, environment_of
from falrt.server import convert
from falrt.server.apps import AppState, with_overrides
from falrt.server.deploy import (
    RECREATE,
    ROLLING,
    BuildLog,
    Deployed,
    Deployer,
    DeployEvent,
    DeployPlan,
    Progress,
)
from falrt.server.fleet import Fleet
from falrt.server.keys import SCOPES, new_key
from falrt.server.rpc import Guard, server_stream, unary
from falrt.server.runner_logs import check_runner_id, read_lines
from falrt.server.runners import RunnerHandle, RunnerState
from falrt.server.scheduler import Scheduler
from falrt.server.secret_box import SecretBox, check_secret
from falrt.server.webhooks import SigningKey
from falrt.store.records import EnvironmentRecord, KeyRecord, Revision, SecretRecord
from falrt.v1 import common_pb2, control_pb2, control_pb2_grpc

Context = aio.ServicerContext[Any, Any]
_STAGES = {
    "UPLOAD": control_pb2.DEPLOY_STAGE_UPLOAD,
    "BUILD": control_pb2.DEPLOY_STAGE_BUILD,
    "ROLLOUT": control_pb2.DEPLOY_STAGE_ROLLOUT,
    "DONE": control_pb2.DEPLOY_STAGE_DONE,
}


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(
        self, scheduler: Scheduler, fleet: Fleet, deployer: Deployer,
        webhook_key: SigningKey | None = None, secret_box: SecretBox | None = None,
        on_revoke: Callable[[str], None] | None = None, guard: Guard | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._fleet = fleet
        self._deployer = deployer
        self._webhook_key = webhook_key
        self._secret_box = secret_box
        self._on_revoke = on_revoke
        self.guard = guard  # who may call (falrt/server/auth.py), run before each method

    @server_stream
    async def Deploy(
        self, request_iterator: AsyncIterator[control_pb2.DeployRequest], context: Context
    ) -> AsyncIterator[control_pb2.DeployResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise errors.InvalidArgumentError("a deploy starts with a DeployHeader")
        plan = _plan(first.header)
        async for event in self._deployer.deploy(plan, _chunks(request_iterator)):
            yield _deploy_response(event)

    @unary
    async def ListApps(
        self, request: control_pb2.ListAppsRequest, context: Context
    ) -> control_pb2.ListAppsResponse:
        environment = request.environment or MAIN
        apps = sorted((a for a in self._scheduler.apps.values()
                       if environment_of(a.name) == environment), key=lambda app: app.name)
        return control_pb2.ListAppsResponse(apps=[self._app_info(app) for app in apps])

    @unary
    async def GetApp(
        self, request: control_pb2.GetAppRequest, context: Context
    ) -> control_pb2.GetAppResponse:
        return control_pb2.GetAppResponse(app=self._app_info(self._app(request.name)))

    @unary
    async def DeleteApp(
        self, request: control_pb2.DeleteAppRequest, context: Context
    ) -> control_pb2.DeleteAppResponse:
        await self._scheduler.delete_app(self._app(request.name).name)
        return control_pb2.DeleteAppResponse()

    @unary
    async def ListRunners(
        self, request: control_pb2.ListRunnersRequest, context: Context
    ) -> control_pb2.ListRunnersResponse:
        if request.app_name:
            self._app(request.app_name)
        states = {RunnerState(s) for s in request.states if s}
        runners = [*self._fleet.runners.values()]
        if RunnerState.TERMINATED in states:
            runners.extend(self._fleet.ended)
        runners.sort(key=lambda r: (r.app_name, r.started_at))
        return control_pb2.ListRunnersResponse(runners=[
            convert.runner_info(r) for r in runners
            if (not request.app_name or r.app_name == request.app_name)
            and (not states or r.state in states)
            and (not request.environment or environment_of(r.app_name) == request.environment)
        ])

    @unary
    async def ScaleApp(
        self, request: control_pb2.ScaleAppRequest, context: Context
    ) -> control_pb2.ScaleAppResponse:
        changes = convert.app_config(request.settings)
        app = await self._scheduler.scale(self._app(request.app_name).name, changes)
        return control_pb2.ScaleAppResponse(app=self._app_info(app))

    @unary
    async def StopRunner(
        self, request: control_pb2.StopRunnerRequest, context: Context
    ) -> control_pb2.StopRunnerResponse:
        runner = self._runner(request.runner_id)
        replacement = self._fleet.replace(runner) if request.replace else None
        if replacement is None:
            runner.last_error = "stopped by `falrt runners stop`"
            self._fleet.stop(runner)
        return control_pb2.StopRunnerResponse(
            runner=convert.runner_info(runner),
            replacement_runner_id=replacement.runner_id if replacement else "")

    @unary
    async def KillRunner(
        self, request: control_pb2.KillRunnerRequest, context: Context
    ) -> control_pb2.KillRunnerResponse:
        runner = self._runner(request.runner_id)
        runner.last_error = "killed by `falrt runners kill`"
        self._fleet.kill(runner)
        return control_pb2.KillRunnerResponse(runner=convert.runner_info(runner))

    @server_stream
    async def RunnerLogs(
        self, request: control_pb2.RunnerLogsRequest, context: Context
    ) -> AsyncIterator[control_pb2.RunnerLogsResponse]:
        check_runner_id(request.runner_id)
        if request.tail < 0:
            raise errors.InvalidArgumentError("tail must be >= 0")
        runner_id = request.runner_id
        async for lines in read_lines(
            self._fleet.log_path(runner_id), tail=request.tail, follow=request.follow,
            running=lambda: runner_id in self._fleet.runners,
        ):
            yield control_pb2.RunnerLogsResponse(lines=lines)

    @unary
    async def ListRevisions(
        self, request: control_pb2.ListRevisionsRequest, context: Context
    ) -> control_pb2.ListRevisionsResponse:
        app = self._app(request.app_name)
        revisions = await self._scheduler.store.list_revisions(app.name)
        return control_pb2.ListRevisionsResponse(revisions=[
            _revision_info(r, live=r.revision_id == app.revision.revision_id) for r in revisions])

    @unary
    async def DeleteRevision(
        self, request: control_pb2.DeleteRevisionRequest, context: Context
    ) -> control_pb2.DeleteRevisionResponse:
        revision = await self._scheduler.store.get_revision(request.revision_id)
        if revision is None:
            raise errors.NotFoundError(f"no revision {request.revision_id!r}")
        app = self._scheduler.apps.get(revision.app_name)
        if app is not None and app.revision.revision_id == revision.revision_id:
            raise errors.FailedPreconditionError(
                f"{revision.revision_id} is the live revision of {revision.app_name}; roll "
                "back to another one first (`falrt apps rollback`)")
        await self._scheduler.store.delete_revision(revision.revision_id)
        return control_pb2.DeleteRevisionResponse()

    @server_stream
    async def Rollback(
        self, request: control_pb2.RollbackRequest, context: Context
    ) -> AsyncIterator[control_pb2.DeployResponse]:
        events = self._deployer.rollback(
            request.app_name, request.revision_id, _strategy(request.strategy), request.auth)
        async for event in events:
            yield _deploy_response(event)

    @unary
    async def Rollout(
        self, request: control_pb2.RolloutRequest, context: Context
    ) -> control_pb2.RolloutResponse:
        replaced, replacements = self._fleet.rollout(
            self._app(request.app_name), force=request.force)
        return control_pb2.RolloutResponse(
            runner_ids=replaced, replacement_runner_ids=replacements)

    # -- environments ------------------------------------------------------------------

    @unary
    async def CreateEnvironment(
        self, request: control_pb2.CreateEnvironmentRequest, context: Context
    ) -> control_pb2.EnvironmentInfo:
        try:
            check_environment(request.name)
        except ValueError as exc:
            raise errors.InvalidArgumentError(str(exc)) from None
        record = EnvironmentRecord(request.name, request.description, time.time())
        if request.name == MAIN or not await self._scheduler.store.create_environment(record):
            raise errors.AlreadyExistsError(f"environment {request.name!r} exists")
        return _environment_info(record)

    @unary
    async def ListEnvironments(
        self, request: control_pb2.ListEnvironmentsRequest, context: Context
    ) -> control_pb2.ListEnvironmentsResponse:
        stored = await self._scheduler.store.list_environments()
        main = control_pb2.EnvironmentInfo(name=MAIN, description="the default environment",
                                           is_default=True)
        return control_pb2.ListEnvironmentsResponse(
            environments=[main, *(_environment_info(e) for e in stored)])

    @unary
    async def DeleteEnvironment(
        self, request: control_pb2.DeleteEnvironmentRequest, context: Context
    ) -> control_pb2.DeleteEnvironmentResponse:
        if request.name == MAIN:
            raise errors.FailedPreconditionError("the main environment cannot be deleted")
        await self._scheduler.environment(request.name)
        apps = [name for name in self._scheduler.apps if environment_of(name) == request.name]
        for name in apps:
            await self._scheduler.delete_app(name)
        secrets = await self._scheduler.store.list_secrets(request.name)
        await self._scheduler.store.delete_environment(request.name)
        return control_pb2.DeleteEnvironmentResponse(apps=apps, secrets=len(secrets))

    # -- secrets -------------------------------------------------------------------------

    @unary
    async def SetSecrets(
        self, request: control_pb2.SetSecretsRequest, context: Context
    ) -> control_pb2.SetSecretsResponse:
        environment = await self._scheduler.environment(request.environment)
        if not request.values:
            raise errors.InvalidArgumentError("give at least one NAME=VALUE")
        for name, value in request.values.items():
            check_secret(name, value)
        box = self._box()
        now = time.time()
        await self._scheduler.store.put_secrets([
            SecretRecord(environment, name, box.encrypt(value), now, now)
            for name, value in sorted(request.values.items())])
        return control_pb2.SetSecretsResponse(names=sorted(request.values))

    @unary
    async def ListSecrets(
        self, request: control_pb2.ListSecretsRequest, context: Context
    ) -> control_pb2.ListSecretsResponse:
        environment = await self._scheduler.environment(request.environment)
        secrets = await self._scheduler.store.list_secrets(environment)
        return control_pb2.ListSecretsResponse(secrets=[
            control_pb2.SecretInfo(name=s.name, environment=s.environment,
                                   created_at=convert.timestamp(s.created_at),
                                   updated_at=convert.timestamp(s.updated_at))
            for s in secrets])

    @unary
    async def UnsetSecret(
        self, request: control_pb2.UnsetSecretRequest, context: Context
    ) -> control_pb2.UnsetSecretResponse:
        environment = await self._scheduler.environment(request.environment)
        if not await self._scheduler.store.delete_secret(environment, request.name):
            raise errors.NotFoundError(
                f"no secret {request.name!r} in environment {environment!r}")
        return control_pb2.UnsetSecretResponse()

    def _box(self) -> SecretBox:
        if self._secret_box is None:
            raise errors.FailedPreconditionError("this server keeps no secrets")
        return self._secret_box

    # -- API keys ------------------------------------------------------------------------

    @unary
    async def CreateKey(
        self, request: control_pb2.CreateKeyRequest, context: Context
    ) -> control_pb2.CreateKeyResponse:
        scope = request.scope.upper()
        if scope not in SCOPES:
            raise errors.InvalidArgumentError(
                f"invalid scope {request.scope!r}: use {' or '.join(SCOPES)}")
        record, key = new_key(scope, request.owner or self._scheduler.settings.owner,
                              request.description)
        await self._scheduler.store.create_key(record)
        return control_pb2.CreateKeyResponse(info=_key_info(record), key=key)

    @unary
    async def ListKeys(
        self, request: control_pb2.ListKeysRequest, context: Context
    ) -> control_pb2.ListKeysResponse:
        keys = await self._scheduler.store.list_keys()
        return control_pb2.ListKeysResponse(keys=[_key_info(k) for k in keys])

    @unary
    async def RevokeKey(
        self, request: control_pb2.RevokeKeyRequest, context: Context
    ) -> control_pb2.RevokeKeyResponse:
        if not await self._scheduler.store.revoke_key(request.key_id, time.time()):
            raise errors.NotFoundError(f"no key {request.key_id!r}; `falrt keys list` shows them")
        if self._on_revoke is not None:
            self._on_revoke(request.key_id)
        return control_pb2.RevokeKeyResponse()

    def _runner(self, runner_id: str) -> RunnerHandle:
        check_runner_id(runner_id)
        runner = self._fleet.runners.get(runner_id)
        if runner is None:
            raise errors.NotFoundError(
                f"no live runner {runner_id!r}; `falrt runners list` shows the runners")
        return runner

    @unary
    async def GetWebhookKeys(
        self, request: control_pb2.GetWebhookKeysRequest, context: Context
    ) -> control_pb2.GetWebhookKeysResponse:
        keys = [] if self._webhook_key is None else [self._webhook_key.jwk()]
        return control_pb2.GetWebhookKeysResponse(
            keys=[control_pb2.WebhookKey(**jwk) for jwk in keys]
        )

    @unary
    async def QueueSize(
        self, request: control_pb2.QueueSizeRequest, context: Context
    ) -> control_pb2.QueueSizeResponse:
        return control_pb2.QueueSizeResponse(
            size=self._scheduler.queue_size(self._app(request.app_name).name))

    @unary
    async def FlushQueue(
        self, request: control_pb2.FlushQueueRequest, context: Context
    ) -> control_pb2.FlushQueueResponse:
        return control_pb2.FlushQueueResponse(
            flushed=self._scheduler.flush(self._app(request.app_name).name))

    def _app(self, name: str) -> AppState:
        app = self._scheduler.apps.get(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {name!r}; `falrt apps list` shows the apps")
        return app

    def _app_info(self, app: AppState) -> control_pb2.AppInfo:
        revision = app.revision
        active = [r for r in self._fleet.runners_of(app.name)
                  if r.state is not RunnerState.TERMINATED]
        return control_pb2.AppInfo(
            name=app.name,
            endpoint_id=f"{self._scheduler.settings.owner}/{app.name}",
            revision_id=revision.revision_id,
            entrypoint=revision.entrypoint,
            settings=convert.app_settings(revision.config),
            endpoints=[convert.endpoint_spec(e) for e in revision.endpoints],
            created_at=convert.timestamp(app.record.created_at),
            updated_at=convert.timestamp(app.record.updated_at),
            active_runners=len(active),
            queue_size=self._scheduler.queue_size(app.name),
            scale_overrides=convert.app_settings(app.record.scale),
            effective=_effective(app),
            environment=environment_of(app.name),
            auth=app.record.auth,
        )


def _effective(app: AppState) -> control_pb2.AppSettings:
    """The settings in force, every scaling field filled in."""
    settings, scaling = app.settings, app.settings.scaling
    config = with_overrides(app.revision.config, app.record.scale)
    return convert.app_settings(msgspec.structs.replace(
        config,
        machine_types=settings.machine_types,
        keep_alive_s=scaling.keep_alive_s,
        min_concurrency=scaling.min_concurrency,
        max_concurrency=scaling.max_concurrency,
        concurrency_buffer=scaling.concurrency_buffer,
        concurrency_buffer_perc=scaling.concurrency_buffer_perc,
        scaling_delay_s=scaling.scaling_delay_s,
        max_multiplexing=scaling.max_multiplexing,
        request_timeout_s=settings.request_timeout_s,
        startup_timeout_s=settings.startup_timeout_s,
        termination_grace_period_s=settings.grace_period_s,
    ))


def _plan(header: control_pb2.DeployHeader) -> DeployPlan:
    return DeployPlan(
        app_name=header.app_name,
        entrypoint=header.entrypoint,
        bundle_sha256=header.bundle_sha256.lower(),
        bundle_size=header.bundle_size,
        config=convert.app_config(header.settings),
        endpoints=tuple(convert.endpoint_record(e) for e in header.endpoints),
        message=header.message,
        reset_scale=header.reset_scale,
        environment=header.environment or MAIN,
        no_cache=header.no_cache,
        strategy=_strategy(header.strategy),
        annotations=dict(header.annotations),
    )


def _environment_info(record: EnvironmentRecord) -> control_pb2.EnvironmentInfo:
    return control_pb2.EnvironmentInfo(name=record.name, description=record.description,
                                       created_at=convert.timestamp(record.created_at))


def _key_info(record: KeyRecord) -> control_pb2.KeyInfo:
    info = control_pb2.KeyInfo(key_id=record.key_id, scope=record.scope, owner=record.owner,
                               description=record.description,
                               created_at=convert.timestamp(record.created_at))
    if record.revoked_at is not None:
        info.revoked_at.CopyFrom(convert.timestamp(record.revoked_at))
    return info


def _strategy(value: int) -> str:
    return RECREATE if value == control_pb2.STRATEGY_RECREATE else ROLLING


def _revision_info(revision: Revision, *, live: bool) -> control_pb2.RevisionInfo:
    return control_pb2.RevisionInfo(
        revision_id=revision.revision_id, app_name=revision.app_name,
        entrypoint=revision.entrypoint, bundle_sha256=revision.bundle_sha256,
        env_key=revision.env_key, settings=convert.app_settings(revision.config),
        endpoints=[convert.endpoint_spec(e) for e in revision.endpoints],
        message=revision.message, annotations=revision.annotations,
        created_at=convert.timestamp(revision.created_at), live=live,
    )


async def _chunks(requests: AsyncIterator[control_pb2.DeployRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("item") != "chunk":
            raise errors.InvalidArgumentError("only bundle chunks may follow the DeployHeader")
        yield request.chunk


def _deploy_response(event: DeployEvent) -> control_pb2.DeployResponse:
    match event:
        case Progress(stage=stage, message=message, fraction=fraction):
            return control_pb2.DeployResponse(progress=control_pb2.DeployProgress(
                stage=_STAGES[stage], message=message, fraction=fraction))
        case BuildLog(line=line):
            return control_pb2.DeployResponse(log=common_pb2.LogLine(message=line, source="build"))
        case Deployed(endpoint_id=endpoint_id, app_name=app_name, revision_id=revision_id):
            return control_pb2.DeployResponse(result=control_pb2.DeployResult(
                endpoint_id=endpoint_id, app_name=app_name, revision_id=revision_id))
        case _:
            raise AssertionError(f"unexpected deploy event {event!r}")
