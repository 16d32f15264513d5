"""In-memory store: the Store contract without durability, for unit tests and ephemeral use."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

import msgspec

from falrt.store.records import (
    AppConfig,
    AppRecord,
    EnvironmentRecord,
    KeyRecord,
    Outcome,
    RequestRecord,
    Revision,
    SecretRecord,
    Status,
)


class MemoryStore:
    """Keeps everything in dicts. Returns copies so callers cannot alias stored state."""

    def __init__(self) -> None:
        self.on_full: Callable[[], None] | None = None  # (memory is never full)
        self.on_batch: Callable[[int, float], None] | None = None  # (nor batched)
        self._apps: dict[str, AppRecord] = {}
        self._revisions: dict[str, Revision] = {}
        self._requests: dict[str, RequestRecord] = {}
        self._webhooks_done: set[str] = set()
        self._environments: dict[str, EnvironmentRecord] = {}
        self._secrets: dict[tuple[str, str], SecretRecord] = {}
        self._keys: dict[str, KeyRecord] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def probe(self) -> None:
        return None

    async def deploy(self, revision: Revision, app: AppRecord) -> None:
        self._revisions[revision.revision_id] = revision
        existing = self._apps.get(app.name)
        created = existing.created_at if existing else app.created_at
        self._apps[app.name] = msgspec.structs.replace(app, created_at=created)

    async def get_revision(self, revision_id: str) -> Revision | None:
        return self._revisions.get(revision_id)

    async def list_revisions(self, app_name: str) -> list[Revision]:
        mine = [r for r in self._revisions.values() if r.app_name == app_name]
        return sorted(mine, key=lambda r: r.created_at, reverse=True)

    async def delete_revision(self, revision_id: str) -> None:
        self._revisions.pop(revision_id, None)

    async def list_apps(self) -> list[AppRecord]:
        return sorted(self._apps.values(), key=lambda app: app.name)

    async def set_scale(self, name: str, scale: AppConfig) -> None:
        app = self._apps.get(name)
        if app is not None:
            self._apps[name] = msgspec.structs.replace(app, scale=scale)

    async def create_environment(self, environment: EnvironmentRecord) -> bool:
        if environment.name in self._environments:
            return False
        self._environments[environment.name] = environment
        return True

    async def list_environments(self) -> list[EnvironmentRecord]:
        return sorted(self._environments.values(), key=lambda e: e.name)

    async def delete_environment(self, name: str) -> None:
        self._environments.pop(name, None)
        self._secrets = {k: v for k, v in self._secrets.items() if k[0] != name}

    async def put_secrets(self, secrets: list[SecretRecord]) -> None:
        for secret in secrets:
            old = self._secrets.get((secret.environment, secret.name))
            if old is not None:
                secret = msgspec.structs.replace(secret, created_at=old.created_at)
            self._secrets[(secret.environment, secret.name)] = secret

    async def list_secrets(self, environment: str) -> list[SecretRecord]:
        return sorted((s for (env, _), s in self._secrets.items() if env == environment),
                      key=lambda s: s.name)

    async def delete_secret(self, environment: str, name: str) -> bool:
        return self._secrets.pop((environment, name), None) is not None

    async def create_key(self, key: KeyRecord) -> None:
        self._keys[key.key_id] = key

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, revoked_at: float) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        if key.revoked_at is None:
            self._keys[key_id] = msgspec.structs.replace(key, revoked_at=revoked_at)
        return True

    async def delete_app(self, name: str) -> None:
        self._apps.pop(name, None)
        self._revisions = {k: v for k, v in self._revisions.items() if v.app_name != name}
        self._requests = {k: v for k, v in self._requests.items() if v.app_name != name}

    def insert_request(self, request: RequestRecord) -> asyncio.Future[None]:
        self._requests[request.request_id] = copy.copy(request)
        return _done()

    def mark_started(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._set_status(request_id, Status.IN_PROGRESS, attempts)

    def requeue(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._set_status(request_id, Status.IN_QUEUE, attempts)

    def _set_status(self, request_id: str, status: Status, attempts: int) -> asyncio.Future[None]:
        record = self._requests.get(request_id)
        if record is not None and record.status is not Status.COMPLETED:
            record.status, record.attempts = status, attempts
        return _done()

    def complete(
        self, request_id: str, outcome: Outcome, completed_at: float
    ) -> asyncio.Future[None]:
        record = self._requests.get(request_id)
        if record is not None:
            record.status, record.outcome = Status.COMPLETED, outcome
            record.completed_at = completed_at
        return _done()

    async def get_request(self, request_id: str) -> RequestRecord | None:
        record = self._requests.get(request_id)
        return None if record is None else copy.copy(record)

    def webhook_done(self, request_id: str) -> asyncio.Future[None]:
        self._webhooks_done.add(request_id)
        return _done()

    async def load_pending_webhooks(self) -> list[RequestRecord]:
        return [copy.copy(r) for r in self._requests.values()
                if r.webhook_url and r.status is Status.COMPLETED
                and r.request_id not in self._webhooks_done]

    async def find_request_by_key(self, idempotency_key: str) -> str | None:
        for record in self._requests.values():
            if idempotency_key and record.idempotency_key == idempotency_key:
                return record.request_id
        return None

    async def delete_completed_before(self, completed_before: float) -> int:
        old = [k for k, r in self._requests.items()
               if r.completed_at is not None and r.completed_at < completed_before]
        for key in old:
            del self._requests[key]
        return len(old)

    async def load_unfinished(self) -> list[RequestRecord]:
        pending = [r for r in self._requests.values() if r.status is not Status.COMPLETED]
        return [copy.copy(r) for r in sorted(pending, key=lambda r: r.seq)]

    async def max_seq(self) -> int:
        return max((r.seq for r in self._requests.values()), default=0)


def _done() -> asyncio.Future[None]:
    """A future that is already resolved: the memory store's writes are immediate."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
