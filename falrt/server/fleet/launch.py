"""How a runner is put on a backend: its spec, its environment (secrets included), and what
its exit says. The fleet decides when and keeps the state; the launcher does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path

from falrt import errors
from falrt.backends.base import Backend, RunnerProcess, RunnerSpec, Survivor
from falrt.backends.environments import Environments
from falrt.gpus import GpuShare
from falrt.names import split_name
from falrt.server.fleet.secret_box import SecretBox
from falrt.server.state.apps import AppState, EffectiveSettings
from falrt.server.state.keys import new_key
from falrt.server.state.runners import RunnerHandle, RunnerState
from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.records import Revision
from falrt.tls import TlsError, runner_env
from falrt.vocabulary import KeyScope

log = logging.getLogger(__name__)

# The description of a runner's key: "runner r-... of app X on server S" (S: the server
# that started it; keys made before falrt named it have no " on server " part).
RUNNER_KEY_PREFIX = "runner "
_ON_SERVER = " on server "


def files_local(settings: ServerSettings) -> bool:
    """Whether runners move files through the server's local store's directory instead
    of gRPC (docs/files.md, "Runners on the server's host"): only process runners, which
    run on the server's host, and only with the local store. Docker and Ray runners (in a
    container, on other hosts) and every runner of an S3 store use gRPC."""
    return settings.backend == "process" and settings.file_store == "local"


class Launcher:
    """Builds runner specs and starts them on the backend. Loop-affine; no state of its own."""

    def __init__(
        self, backend: Backend, environments: Environments, store: Store,
        secret_box: SecretBox, settings: ServerSettings,
    ) -> None:
        self._backend = backend
        self._environments = environments
        self._store = store
        self._secret_box = secret_box
        self._settings = settings
        # The API key each runner was given at its latest start (runner id -> key id).
        self._runner_keys: dict[str, str] = {}
        # The bundle folder of each runner's latest start (RunnerLink.FetchBundle serves it).
        self._bundles: dict[str, Path] = {}
        self.server_id = ""  # named in the runner keys' descriptions once set
        self.host = ""  # FALRT_HOST: the gRPC address ("": the one runners dial)

    def capacity(self, machine_type: str, num_gpus: int, share: GpuShare | None = None) -> str:
        """Why the backend cannot start a runner of `machine_type` now ("" when it can)."""
        return self._backend.capacity(machine_type, num_gpus, share)

    def log_path(self, runner_id: str) -> Path:
        return self._settings.runner_logs_dir / f"{runner_id}.log"

    async def spec(
        self, runner: RunnerHandle, revision: Revision, settings: EffectiveSettings,
        address: str,
    ) -> RunnerSpec:
        """The spec of the runner's next start. Raises FailedPreconditionError when a secret
        the app lists is not set."""
        spec = RunnerSpec(
            runner_id=runner.runner_id,
            token=runner.token,
            server_address=address,
            python=self._environments.python_for(revision.env_key),
            bundle_dir=self._settings.bundles_dir / revision.bundle_sha256,
            entrypoint=revision.entrypoint,
            max_multiplexing=runner.max_multiplexing,
            grace_period_s=settings.grace_period_s,
            log_path=self.log_path(runner.runner_id),
            machine_type=runner.machine_type,
            num_gpus=settings.num_gpus,
            runners_per_gpu=settings.runners_per_gpu,
            app_name=runner.app_name,
            revision_id=revision.revision_id,
            requirements=revision.config.requirements,
            # The app's own variables (secrets) win over the runner key's.
            env=await self._runner_key_env(runner, address)
            | await self._env(runner.app_name, revision),
        )
        self._bundles[runner.runner_id] = spec.bundle_dir
        return spec

    def bundle_dir(self, runner_id: str) -> Path | None:
        """The bundle folder of the runner's latest start; None once it has ended."""
        return self._bundles.get(runner_id)

    async def start(self, spec: RunnerSpec, runner: RunnerHandle) -> RunnerProcess:
        """Fetches the runner's image (IMAGE_PULL meanwhile) and starts it. Raises
        NoCapacityError, or whatever the backend raises."""
        await self._backend.fetch(spec, lambda: _pulling(runner))
        return await self._backend.start(spec)

    async def _env(self, app_name: str, revision: Revision) -> dict[str, str]:
        """What a runner of `revision` gets in its environment: the app's name and
        environment, the secrets of that environment (those the app lists, or all), and
        with TLS what it needs to dial the server."""
        name, environment = split_name(app_name)
        env = {"FALRT_APP_NAME": name, "FALRT_ENV": environment}
        stored = {s.name: s for s in await self._store.list_secrets(environment)}
        wanted = revision.config.secrets
        missing = [secret for secret in wanted if secret not in stored]
        if missing:
            raise errors.FailedPreconditionError(
                f"secret(s) {', '.join(missing)} the app lists are not set in environment "
                f"{environment} (`falrt secrets set --env {environment} NAME=VALUE`)")
        for secret_name, secret in stored.items():
            if not wanted or secret_name in wanted:
                env[secret_name] = self._secret_box.decrypt(secret.value)
        # The runner sends outputs over this size by file reference, in files kept as long
        # as the results are (docs/files.md, "Payloads by reference").
        env["FALRT_PAYLOAD_REF_BYTES"] = str(self._settings.payload_ref_bytes)
        env["FALRT_PAYLOAD_EXPIRY_S"] = str(max(1, int(self._settings.result_retention_s)))
        if files_local(self._settings):
            env["FALRT_FILES_LOCAL"] = "1"
        if self._settings.otlp_endpoint:  # the handler's spans go where the server's go
            env["FALRT_OTLP_ENDPOINT"] = self._settings.otlp_endpoint
        return env | await self._tls_env()

    async def _runner_key_env(self, runner: RunnerHandle, address: str) -> dict[str, str]:
        """A new API-scope key of the server's owner for this start of the runner, with the
        server's gRPC address (`FALRT_KEY`, `FALRT_HOST`): `falrt.client` works in a handler with
        no configuration (docs/security.md, "Runner keys"). The key of the runner's previous
        start is revoked; `revoke_runner_key` revokes this one when the runner ends. {} for
        a docker runner of a server without TLS: its key would travel in clear to another
        address, which the client refuses."""
        await self.revoke_runner_key(runner.runner_id)
        tls = self._settings.tls is not None
        if not tls and self._settings.backend != "process":
            return {}
        description = f"{RUNNER_KEY_PREFIX}{runner.runner_id} of app {runner.app_name}"
        if self.server_id:
            description += f"{_ON_SERVER}{self.server_id}"
        record, key = new_key(KeyScope.API, self._settings.owner, description)
        await self._store.create_key(record)
        self._runner_keys[runner.runner_id] = record.key_id
        host = self.host or address
        return {"FALRT_KEY": key, "FALRT_HOST": f"https://{host}" if tls else host}

    def revoke_runner_key(self, runner_id: str) -> Awaitable[None]:
        """Revokes the key the runner was given at its latest start (the one it holds now,
        not one a later start makes). Never raises: a store error is logged, and the key is
        revoked when the server stops or at its next start."""
        self._bundles.pop(runner_id, None)  # (the runner ended, or starts again)
        return self._revoke(runner_id, self._runner_keys.get(runner_id))

    async def _revoke(self, runner_id: str, key_id: str | None) -> None:
        if key_id is None:
            return
        try:
            await self._store.revoke_key(key_id, time.time())
        except Exception:
            log.exception("revoking key %s of runner %s failed", key_id, runner_id)
            return
        if self._runner_keys.get(runner_id) == key_id:
            del self._runner_keys[runner_id]

    async def sweep_runner_keys(
        self, running: set[str], revoke_others: bool, live_servers: set[str] | None = None,
    ) -> int:
        """Takes over the keys of the `running` (adopted) runners, so that they are revoked
        when those end; with `revoke_others` (one server on its store, at its start) revokes
        every other runner key left valid (its runner ended while no server was up); with
        `live_servers` (a shared store) revokes those of runners started by a server not
        among them (it stopped without revoking them) or by this one (they ended while it
        was down). Returns how many were revoked."""
        revoked = 0
        for record in await self._store.list_keys():
            if record.revoked_at is not None or not record.description.startswith(
                    RUNNER_KEY_PREFIX) or record.scope != KeyScope.API:
                continue
            runner_id = record.description.removeprefix(RUNNER_KEY_PREFIX).partition(" ")[0]
            started_by = record.description.rpartition(_ON_SERVER)[2] if (
                _ON_SERVER in record.description) else ""
            if runner_id in running:
                self._runner_keys[runner_id] = record.key_id
            elif revoke_others or (live_servers is not None and started_by and (
                    started_by == self.server_id or started_by not in live_servers)):
                await self._store.revoke_key(record.key_id, time.time())
                revoked += 1
        return revoked

    async def revoke_runner_keys(self) -> None:
        """Revokes the keys of every runner this launcher started (the server stops)."""
        for runner_id in list(self._runner_keys):
            await self.revoke_runner_key(runner_id)

    async def _tls_env(self) -> dict[str, str]:
        """What the runner needs to dial a TLS server (`falrt.tls.runner_env`); {} without
        TLS. Raises FailedPreconditionError when a TLS file cannot be read now."""
        if self._settings.tls is None:
            return {}
        try:
            return await asyncio.to_thread(runner_env, self._settings.tls)
        except TlsError as exc:
            raise errors.FailedPreconditionError(str(exc)) from None

    async def exit_reason(self, runner: RunnerHandle) -> str:
        """Why an exited runner ended: what the backend knows (an OOM kill), else the last
        line of its log."""
        assert runner.process is not None
        known = runner.process.exit_reason
        return known or await asyncio.to_thread(_last_error_line, self.log_path(runner.runner_id))


async def kill_after(process: RunnerProcess, grace_s: float, runner_id: str) -> None:
    """Kills the runner if it has not exited `grace_s` after being asked to stop."""
    try:
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    except TimeoutError:
        log.warning("runner %s did not exit in %.0f s; killing it", runner_id, grace_s)
        process.kill()


def not_adoptable(survivor: Survivor, app: AppState | None, address: str) -> str:
    """Why a runner of the server's previous life cannot be adopted; "" when it can."""
    if app is None:
        return f"its app {survivor.app_name!r} is gone"
    if app.revision.revision_id != survivor.revision_id:
        return f"its revision {survivor.revision_id} is no longer {app.name}'s live one"
    if survivor.server_address != address:
        return f"it dials {survivor.server_address}, not this server's {address}"
    return ""


def _pulling(runner: RunnerHandle) -> None:
    """The backend pulls the runner's image (unless the runner was stopped meanwhile)."""
    if runner.state is RunnerState.PENDING:
        runner.set_state(RunnerState.IMAGE_PULL)


def _last_error_line(path: Path) -> str:
    """The last non-empty line of a runner's log (usually the exception of a failed setup)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:500] if lines else "no output"


__all__ = ["Launcher", "kill_after", "not_adoptable"]
