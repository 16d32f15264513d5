"""The public Control service: deploy, apps, runners. Converts at the edge."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from grpc import aio

from falrt import errors
from falrt.names import MAIN, check_environment, environment_of
from falrt.server.api import control_convert, convert
from falrt.server.api.rpc import Guard, server_stream, unary
from falrt.server.control.apps import AppControl
from falrt.server.control.cluster import ScalingLead
from falrt.server.control.deploy import Deployer
from falrt.server.fleet.fleet import Fleet
from falrt.server.fleet.runner_logs import check_runner_id, read_lines
from falrt.server.fleet.secret_box import SecretBox, check_secret
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import Apps, AppState
from falrt.server.state.keys import new_key
from falrt.server.state.runners import RunnerHandle, RunnerState
from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.records import EnvironmentRecord, SecretRecord
from falrt.v1 import control_pb2, control_pb2_grpc
from falrt.vocabulary import KeyScope, names
from falrt.webhook_signatures import SigningKey

Context = aio.ServicerContext[Any, Any]


class ControlService(control_pb2_grpc.ControlServicer):
    """Converts each Control call and hands it to the control plane (apps, deploys,
    environments, secrets, keys), the fleet (runners) or the scheduler (queues)."""

    def __init__(
        self, apps: Apps, control: AppControl, deployer: Deployer, fleet: Fleet,
        scheduler: Scheduler, store: Store, secret_box: SecretBox, webhook_key: SigningKey,
        settings: ServerSettings, on_revoke: Callable[[str], None], guard: Guard,
        scaling_lead: Callable[[str], Awaitable[ScalingLead]],
    ) -> None:
        self._apps = apps
        self._scaling_lead = scaling_lead  # an app's, as the store has it (GetApp)
        self._control = control
        self._deployer = deployer
        self._fleet = fleet
        self._scheduler = scheduler
        self._store = store
        self._secret_box = secret_box
        self._webhook_key = webhook_key
        self._owner = settings.owner
        self._on_revoke = on_revoke
        self.guard = guard  # who may call (falrt/server/api/auth.py), run before each method

    @server_stream
    async def Deploy(
        self, request_iterator: AsyncIterator[control_pb2.DeployRequest], context: Context
    ) -> AsyncIterator[control_pb2.DeployResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise errors.InvalidArgumentError("a deploy starts with a DeployHeader")
        plan = control_convert.plan(first.header)
        chunks = control_convert.chunks(request_iterator)
        async for event in self._deployer.deploy(plan, chunks):
            yield control_convert.deploy_response(event)

    @unary
    async def ListApps(
        self, request: control_pb2.ListAppsRequest, context: Context
    ) -> control_pb2.ListAppsResponse:
        environment = request.environment or MAIN
        apps = sorted((a for a in self._apps if environment_of(a.name) == environment),
                      key=lambda app: app.name)
        return control_pb2.ListAppsResponse(apps=[self._app_info(app) for app in apps])

    @unary
    async def GetApp(
        self, request: control_pb2.GetAppRequest, context: Context
    ) -> control_pb2.GetAppResponse:
        app = self._app(request.name)
        info = self._app_info(app)
        info.scaling_lead.CopyFrom(
            control_convert.scaling_lead(await self._scaling_lead(app.name)))
        return control_pb2.GetAppResponse(app=info)

    @unary
    async def DeleteApp(
        self, request: control_pb2.DeleteAppRequest, context: Context
    ) -> control_pb2.DeleteAppResponse:
        await self._control.delete(self._app(request.name).name)
        return control_pb2.DeleteAppResponse()

    @unary
    async def ListRunners(
        self, request: control_pb2.ListRunnersRequest, context: Context
    ) -> control_pb2.ListRunnersResponse:
        if request.app_name:
            self._app(request.app_name)
        states = _runner_states(request.states)
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
        app = await self._control.scale(self._app(request.app_name).name, changes)
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
        revisions = await self._store.list_revisions(app.name)
        return control_pb2.ListRevisionsResponse(revisions=[
            control_convert.revision_info(r, live=r.revision_id == app.revision.revision_id)
            for r in revisions])

    @unary
    async def DeleteRevision(
        self, request: control_pb2.DeleteRevisionRequest, context: Context
    ) -> control_pb2.DeleteRevisionResponse:
        revision = await self._store.get_revision(request.revision_id)
        if revision is None:
            raise errors.NotFoundError(f"no revision {errors.quote(request.revision_id)}")
        app = self._apps.get(revision.app_name)
        if app is not None and app.revision.revision_id == revision.revision_id:
            raise errors.FailedPreconditionError(
                f"{revision.revision_id} is the live revision of {revision.app_name}; roll "
                "back to another one first (`falrt apps rollback`)")
        await self._store.delete_revision(revision.revision_id)
        return control_pb2.DeleteRevisionResponse()

    @server_stream
    async def Rollback(
        self, request: control_pb2.RollbackRequest, context: Context
    ) -> AsyncIterator[control_pb2.DeployResponse]:
        events = self._deployer.rollback(request.app_name, request.revision_id,
                                         control_convert.strategy(request.strategy), request.auth)
        async for event in events:
            yield control_convert.deploy_response(event)

    @unary
    async def Rollout(
        self, request: control_pb2.RolloutRequest, context: Context
    ) -> control_pb2.RolloutResponse:
        replaced, replacements = self._control.rollout(
            self._app(request.app_name).name, force=request.force)
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
        if request.name == MAIN or not await self._store.create_environment(record):
            raise errors.AlreadyExistsError(f"environment {errors.quote(request.name)} exists")
        return control_convert.environment_info(record)

    @unary
    async def ListEnvironments(
        self, request: control_pb2.ListEnvironmentsRequest, context: Context
    ) -> control_pb2.ListEnvironmentsResponse:
        stored = await self._store.list_environments()
        main = control_pb2.EnvironmentInfo(name=MAIN, description="the default environment",
                                           is_default=True)
        return control_pb2.ListEnvironmentsResponse(
            environments=[main, *(control_convert.environment_info(e) for e in stored)])

    @unary
    async def DeleteEnvironment(
        self, request: control_pb2.DeleteEnvironmentRequest, context: Context
    ) -> control_pb2.DeleteEnvironmentResponse:
        if request.name == MAIN:
            raise errors.FailedPreconditionError("the main environment cannot be deleted")
        await self._control.environment(request.name)
        apps = [name for name in self._apps.names() if environment_of(name) == request.name]
        for name in apps:
            await self._control.delete(name)
        secrets = await self._store.list_secrets(request.name)
        await self._store.delete_environment(request.name)
        return control_pb2.DeleteEnvironmentResponse(apps=apps, secrets=len(secrets))

    # -- secrets -------------------------------------------------------------------------

    @unary
    async def SetSecrets(
        self, request: control_pb2.SetSecretsRequest, context: Context
    ) -> control_pb2.SetSecretsResponse:
        environment = await self._control.environment(request.environment)
        if not request.values:
            raise errors.InvalidArgumentError("give at least one NAME=VALUE")
        for name, value in request.values.items():
            check_secret(name, value)
        now = time.time()
        await self._store.put_secrets([
            SecretRecord(environment, name, self._secret_box.encrypt(value), now, now)
            for name, value in sorted(request.values.items())])
        return control_pb2.SetSecretsResponse(names=sorted(request.values))

    @unary
    async def ListSecrets(
        self, request: control_pb2.ListSecretsRequest, context: Context
    ) -> control_pb2.ListSecretsResponse:
        environment = await self._control.environment(request.environment)
        secrets = await self._store.list_secrets(environment)
        return control_pb2.ListSecretsResponse(secrets=[
            control_pb2.SecretInfo(name=s.name, environment=s.environment,
                                   created_at=convert.timestamp(s.created_at),
                                   updated_at=convert.timestamp(s.updated_at))
            for s in secrets])

    @unary
    async def UnsetSecret(
        self, request: control_pb2.UnsetSecretRequest, context: Context
    ) -> control_pb2.UnsetSecretResponse:
        environment = await self._control.environment(request.environment)
        if not await self._store.delete_secret(environment, request.name):
            raise errors.NotFoundError(
                f"no secret {errors.quote(request.name)} in environment {environment!r}")
        return control_pb2.UnsetSecretResponse()

    # -- API keys ------------------------------------------------------------------------

    @unary
    async def CreateKey(
        self, request: control_pb2.CreateKeyRequest, context: Context
    ) -> control_pb2.CreateKeyResponse:
        scope = request.scope.upper()
        if scope not in names(KeyScope):
            raise errors.InvalidArgumentError(
                f"invalid scope {errors.quote(request.scope)}: use {' or '.join(names(KeyScope))}")
        record, key = new_key(KeyScope(scope), request.owner or self._owner,
                              request.description)
        await self._store.create_key(record)
        return control_pb2.CreateKeyResponse(info=control_convert.key_info(record), key=key)

    @unary
    async def ListKeys(
        self, request: control_pb2.ListKeysRequest, context: Context
    ) -> control_pb2.ListKeysResponse:
        keys = await self._store.list_keys()
        return control_pb2.ListKeysResponse(keys=[control_convert.key_info(k) for k in keys])

    @unary
    async def RevokeKey(
        self, request: control_pb2.RevokeKeyRequest, context: Context
    ) -> control_pb2.RevokeKeyResponse:
        if not await self._store.revoke_key(request.key_id, time.time()):
            raise errors.NotFoundError(
                f"no key {errors.quote(request.key_id)}; `falrt keys list` shows them")
        self._on_revoke(request.key_id)
        return control_pb2.RevokeKeyResponse()

    def _runner(self, runner_id: str) -> RunnerHandle:
        check_runner_id(runner_id)
        runner = self._fleet.runners.get(runner_id)
        if runner is None:
            raise errors.NotFoundError(
                f"no live runner {errors.quote(runner_id)}; `falrt runners list` shows the runners")
        return runner

    @unary
    async def GetWebhookKeys(
        self, request: control_pb2.GetWebhookKeysRequest, context: Context
    ) -> control_pb2.GetWebhookKeysResponse:
        return control_pb2.GetWebhookKeysResponse(
            keys=[control_pb2.WebhookKey(**self._webhook_key.jwk())])

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
        return self._control.get(name)

    def _app_info(self, app: AppState) -> control_pb2.AppInfo:
        active = sum(1 for r in self._fleet.runners_of(app.name)
                     if r.state is not RunnerState.TERMINATED)
        return control_convert.app_info(app, owner=self._owner, active_runners=active,
                                        queue_size=self._scheduler.queue_size(app.name))


def _runner_states(values: Iterable[int]) -> set[RunnerState]:
    """The states a ListRunners request filters on (0, unspecified, is ignored). Raises
    InvalidArgumentError for a number the contract has no state for."""
    known = {state.value for state in RunnerState}
    unknown = sorted({value for value in values if value and value not in known})
    if unknown:
        raise errors.InvalidArgumentError(
            f"unknown runner states {unknown[:5]}: RunnerState numbers are {min(known)} to "
            f"{max(known)}")
    return {RunnerState(value) for value in values if value}
