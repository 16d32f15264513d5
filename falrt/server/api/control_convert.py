"""Conversions of the Control service's messages: app, revision, key and environment
infos, deploy plans and progress. Like falrt/server/api/convert.py, but for the control
plane's records; the servicer calls these and the control plane never sees a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from falrt import errors
from falrt.names import MAIN, environment_of
from falrt.server.api import convert
from falrt.server.control.cluster import ScalingLead
from falrt.server.control.deploy import (
    BuildLog,
    Deployed,
    DeployEvent,
    DeployPlan,
    DeployStage,
    Progress,
)
from falrt.server.state.apps import AppState, with_overrides
from falrt.store.records import EnvironmentRecord, KeyRecord, Revision
from falrt.v1 import common_pb2, control_pb2
from falrt.vocabulary import DeployStrategy

_STAGES = {
    DeployStage.UPLOAD: control_pb2.DEPLOY_STAGE_UPLOAD,
    DeployStage.BUILD: control_pb2.DEPLOY_STAGE_BUILD,
    DeployStage.ROLLOUT: control_pb2.DEPLOY_STAGE_ROLLOUT,
    DeployStage.DONE: control_pb2.DEPLOY_STAGE_DONE,
}


def scaling_lead(lead: ScalingLead) -> control_pb2.ScalingLead:
    message = control_pb2.ScalingLead(shared=lead.shared, server_id=lead.server_id,
                                      this_server=lead.this_server)
    if lead.lease_until:
        message.lease_until.CopyFrom(convert.timestamp(lead.lease_until))
    return message


def app_info(
    app: AppState, *, owner: str, active_runners: int, queue_size: int
) -> control_pb2.AppInfo:
    revision = app.revision
    return control_pb2.AppInfo(
        name=app.name,
        endpoint_id=f"{owner}/{app.name}",
        revision_id=revision.revision_id,
        entrypoint=revision.entrypoint,
        settings=convert.app_settings(revision.config),
        endpoints=[convert.endpoint_spec(e) for e in revision.endpoints],
        created_at=convert.timestamp(app.record.created_at),
        updated_at=convert.timestamp(app.record.updated_at),
        active_runners=active_runners,
        queue_size=queue_size,
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


def plan(header: control_pb2.DeployHeader) -> DeployPlan:
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
        wait=header.wait,
        force=header.force,
        strategy=strategy(header.strategy),
        annotations=dict(header.annotations),
    )


def environment_info(record: EnvironmentRecord) -> control_pb2.EnvironmentInfo:
    return control_pb2.EnvironmentInfo(name=record.name, description=record.description,
                                       created_at=convert.timestamp(record.created_at))


def key_info(record: KeyRecord) -> control_pb2.KeyInfo:
    info = control_pb2.KeyInfo(key_id=record.key_id, scope=record.scope, owner=record.owner,
                               description=record.description,
                               created_at=convert.timestamp(record.created_at))
    if record.revoked_at is not None:
        info.revoked_at.CopyFrom(convert.timestamp(record.revoked_at))
    return info


def strategy(value: int) -> DeployStrategy:
    return (DeployStrategy.RECREATE if value == control_pb2.STRATEGY_RECREATE
            else DeployStrategy.ROLLING)


def revision_info(revision: Revision, *, live: bool) -> control_pb2.RevisionInfo:
    return control_pb2.RevisionInfo(
        revision_id=revision.revision_id, app_name=revision.app_name,
        entrypoint=revision.entrypoint, bundle_sha256=revision.bundle_sha256,
        env_key=revision.env_key, settings=convert.app_settings(revision.config),
        endpoints=[convert.endpoint_spec(e) for e in revision.endpoints],
        message=revision.message, annotations=revision.annotations,
        created_at=convert.timestamp(revision.created_at), live=live,
    )


async def chunks(requests: AsyncIterator[control_pb2.DeployRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("item") != "chunk":
            raise errors.InvalidArgumentError("only bundle chunks may follow the DeployHeader")
        yield request.chunk


def deploy_response(event: DeployEvent) -> control_pb2.DeployResponse:
    match event:
        case Progress(stage=stage, message=message, fraction=fraction):
            return control_pb2.DeployResponse(progress=control_pb2.DeployProgress(
                stage=_STAGES[stage], message=message, fraction=fraction))
        case BuildLog(line=line):
            return control_pb2.DeployResponse(log=common_pb2.LogLine(message=line, source="build"))
        case Deployed(endpoint_id=endpoint_id, app_name=app_name, revision_id=revision_id,
                      unchanged=unchanged):
            return control_pb2.DeployResponse(result=control_pb2.DeployResult(
                endpoint_id=endpoint_id, app_name=app_name, revision_id=revision_id,
                unchanged=unchanged))
        case _:
            raise AssertionError(f"unexpected deploy event {event!r}")
