"""A small blocking client of the Control service, for the CLI.

It returns the protobuf replies as they are (the CLI renders them); every gRPC failure
surfaces as a falrt exception.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from types import TracebackType
from typing import Unpack

from falrt.client.connection import ConnectOptions, channel, resolve_target
from falrt.client.rpc_errors import translate_rpc_errors
from falrt.v1 import control_pb2, control_pb2_grpc

DEPLOY_CHUNK_BYTES = 1024 * 1024


class ControlClient:
    """Deploys apps and reads apps and runners. Close it (or use `with`)."""

    def __init__(self, host: str | None = None, **connect: Unpack[ConnectOptions]) -> None:
        """`host`: `HOST:PORT` or `https://HOST:PORT` (default `$FALRT_HOST`, else
        127.0.0.1:50051); `connect`: TLS files and the API key (`ConnectOptions`).
        Raises InsecureConnectionError rather than send a key in clear to another
        machine."""
        self.target = resolve_target(host, **connect)
        self.host = self.target.address
        self._channel = channel(self.target)
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def close(self) -> None:
        """Closes the channel. Idempotent."""
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def deploy(
        self, header: control_pb2.DeployHeader, bundle: bytes
    ) -> Generator[control_pb2.DeployResponse, None, None]:
        """Streams `header` then `bundle` in 1 MiB chunks; yields progress, logs, the result.

        Closing the generator early cancels the deploy call.
        """
        call = self._stub.Deploy(_deploy_requests(header, bundle))
        try:
            with translate_rpc_errors():
                yield from call
        finally:
            call.cancel()

    def list_apps(self, environment: str = "") -> list[control_pb2.AppInfo]:
        """The apps of an environment ("": main)."""
        request = control_pb2.ListAppsRequest(environment=environment)
        with translate_rpc_errors():
            return list(self._stub.ListApps(request).apps)

    def get_app(self, name: str) -> control_pb2.AppInfo:
        """Raises `NotFoundError` when there is no such app."""
        with translate_rpc_errors():
            reply: control_pb2.GetAppResponse = self._stub.GetApp(
                control_pb2.GetAppRequest(name=name)
            )
        return reply.app

    def delete_app(self, name: str) -> None:
        """Raises `NotFoundError` when there is no such app."""
        with translate_rpc_errors():
            self._stub.DeleteApp(control_pb2.DeleteAppRequest(name=name))

    def list_runners(
        self, app_name: str = "", states: Sequence[int] = (), environment: str = ""
    ) -> list[control_pb2.RunnerInfo]:
        """All runners, or only those of `app_name`, or only those in `states`
        (`common_pb2.RunnerState` values; TERMINATED lists the latest ended ones), or only
        those of `environment`'s apps."""
        request = control_pb2.ListRunnersRequest(
            app_name=app_name, states=states, environment=environment)  # type: ignore[arg-type]
        with translate_rpc_errors():
            reply = self._stub.ListRunners(request)
        return list(reply.runners)

    def list_revisions(self, app_name: str) -> list[control_pb2.RevisionInfo]:
        """The app's revisions, newest first."""
        with translate_rpc_errors():
            reply = self._stub.ListRevisions(control_pb2.ListRevisionsRequest(app_name=app_name))
        return list(reply.revisions)

    def delete_revision(self, revision_id: str) -> None:
        """Raises FailedPreconditionError for the live revision."""
        with translate_rpc_errors():
            self._stub.DeleteRevision(control_pb2.DeleteRevisionRequest(revision_id=revision_id))

    def rollback(
        self, app_name: str, revision_id: str, strategy: int = control_pb2.STRATEGY_ROLLING,
        auth: str = "",
    ) -> Generator[control_pb2.DeployResponse, None, None]:
        """Makes an earlier revision live; yields progress like `deploy`, then the result.
        `auth` changes who may call the app ("": unchanged)."""
        call = self._stub.Rollback(control_pb2.RollbackRequest(
            app_name=app_name, revision_id=revision_id, strategy=strategy,  # type: ignore[arg-type]
            auth=auth))
        try:
            with translate_rpc_errors():
                yield from call
        finally:
            call.cancel()

    def rollout(self, app_name: str, *, force: bool = False) -> control_pb2.RolloutResponse:
        """Replaces every runner of the app's live revision (or kills them with `force`)."""
        with translate_rpc_errors():
            reply: control_pb2.RolloutResponse = self._stub.Rollout(
                control_pb2.RolloutRequest(app_name=app_name, force=force))
        return reply

    def create_environment(self, name: str, description: str = "") -> control_pb2.EnvironmentInfo:
        with translate_rpc_errors():
            reply: control_pb2.EnvironmentInfo = self._stub.CreateEnvironment(
                control_pb2.CreateEnvironmentRequest(name=name, description=description))
        return reply

    def list_environments(self) -> list[control_pb2.EnvironmentInfo]:
        with translate_rpc_errors():
            reply = self._stub.ListEnvironments(control_pb2.ListEnvironmentsRequest())
        return list(reply.environments)

    def delete_environment(self, name: str) -> control_pb2.DeleteEnvironmentResponse:
        """Deletes it with its apps, revisions and secrets."""
        with translate_rpc_errors():
            reply: control_pb2.DeleteEnvironmentResponse = self._stub.DeleteEnvironment(
                control_pb2.DeleteEnvironmentRequest(name=name))
        return reply

    def set_secrets(self, environment: str, values: dict[str, str]) -> list[str]:
        with translate_rpc_errors():
            reply = self._stub.SetSecrets(
                control_pb2.SetSecretsRequest(environment=environment, values=values))
        return list(reply.names)

    def list_secrets(self, environment: str) -> list[control_pb2.SecretInfo]:
        """Names and times only: the server never returns a value."""
        with translate_rpc_errors():
            reply = self._stub.ListSecrets(control_pb2.ListSecretsRequest(environment=environment))
        return list(reply.secrets)

    def unset_secret(self, environment: str, name: str) -> None:
        with translate_rpc_errors():
            self._stub.UnsetSecret(
                control_pb2.UnsetSecretRequest(environment=environment, name=name))

    def create_key(
        self, scope: str, description: str = "", owner: str = ""
    ) -> control_pb2.CreateKeyResponse:
        """A new key; its `key` ("key_id:secret") is shown only in this reply."""
        with translate_rpc_errors():
            reply: control_pb2.CreateKeyResponse = self._stub.CreateKey(
                control_pb2.CreateKeyRequest(scope=scope, description=description, owner=owner))
        return reply

    def list_keys(self) -> list[control_pb2.KeyInfo]:
        with translate_rpc_errors():
            return list(self._stub.ListKeys(control_pb2.ListKeysRequest()).keys)

    def revoke_key(self, key_id: str) -> None:
        with translate_rpc_errors():
            self._stub.RevokeKey(control_pb2.RevokeKeyRequest(key_id=key_id))

    def scale_app(self, name: str, settings: control_pb2.AppSettings) -> control_pb2.AppInfo:
        """Changes the app's scaling settings (the fields `settings` sets); the app after."""
        with translate_rpc_errors():
            reply = self._stub.ScaleApp(
                control_pb2.ScaleAppRequest(app_name=name, settings=settings))
        return reply.app

    def stop_runner(
        self, runner_id: str, *, replace: bool = False
    ) -> control_pb2.StopRunnerResponse:
        """Stops a runner gracefully; with `replace`, after a replacement is ready."""
        with translate_rpc_errors():
            reply: control_pb2.StopRunnerResponse = self._stub.StopRunner(
                control_pb2.StopRunnerRequest(runner_id=runner_id, replace=replace))
        return reply

    def kill_runner(self, runner_id: str) -> control_pb2.RunnerInfo:
        with translate_rpc_errors():
            reply = self._stub.KillRunner(control_pb2.KillRunnerRequest(runner_id=runner_id))
        return reply.runner

    def runner_logs(
        self, runner_id: str, *, follow: bool = False, tail: int = 0
    ) -> Generator[str, None, None]:
        """The runner's output lines; with `follow`, new ones until the runner ends."""
        call = self._stub.RunnerLogs(
            control_pb2.RunnerLogsRequest(runner_id=runner_id, follow=follow, tail=tail))
        try:
            with translate_rpc_errors():
                for reply in call:
                    yield from reply.lines
        finally:
            call.cancel()

    def queue_size(self, app_name: str) -> int:
        """Requests of `app_name` waiting IN_QUEUE."""
        with translate_rpc_errors():
            reply = self._stub.QueueSize(control_pb2.QueueSizeRequest(app_name=app_name))
        return reply.size

    def flush_queue(self, app_name: str) -> int:
        """Cancels every queued request of `app_name`; how many there were."""
        with translate_rpc_errors():
            reply = self._stub.FlushQueue(control_pb2.FlushQueueRequest(app_name=app_name))
        return reply.flushed


def _deploy_requests(
    header: control_pb2.DeployHeader, bundle: bytes
) -> Iterator[control_pb2.DeployRequest]:
    yield control_pb2.DeployRequest(header=header)
    for offset in range(0, len(bundle), DEPLOY_CHUNK_BYTES):
        yield control_pb2.DeployRequest(chunk=bundle[offset : offset + DEPLOY_CHUNK_BYTES])
