"""The store contract: durable apps, revisions and queued requests.

Every method is a coroutine and safe to call from the server's event loop: no
implementation blocks the loop. A method returns only once its write is durable, so a
caller may acknowledge what it wrote (Submit answers after `insert_request`).

The three hot-path writes (`insert_request`, `requeue`, `complete`) are plain methods that
queue their write *when called* and return an awaitable that resolves once it is durable.
Writes take effect in the order the methods were called: a write called after another never
lands before it (the scheduler relies on this to store an outcome while its request's INSERT
is still being committed).

A write that fails for lack of space (the disk, or the database server's) raises
`falrt.errors.StoreFullError`, and the store calls its `on_full` listener (the server's
`StoreHealth`, which then probes until the store can write again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from falrt.store.records import (
    AppConfig,
    AppRecord,
    ClusterEvent,
    EnvironmentRecord,
    KeyRecord,
    Outcome,
    RequestRecord,
    Revision,
    SecretRecord,
)


class Store(Protocol):
    # Called on the event loop each time a write fails for lack of space; None: nobody.
    on_full: Callable[[], None] | None
    # Called after each committed batch of writes with its size and its duration in
    # seconds (metrics), on the store's writer thread or task; None: nobody.
    on_batch: Callable[[int, float], None] | None

    async def open(self) -> None:
        """Creates or migrates the schema. Called once before any other method."""

    async def close(self) -> None:
        """Flushes pending writes and releases the store. Idempotent."""

    async def probe(self) -> None:
        """One small durable write (a few KiB), to learn whether the store can write again;
        raises StoreFullError while it cannot."""

    async def deploy(self, revision: Revision, app: AppRecord) -> None:
        """Stores a revision (unless it is stored: a rollback) and points its app at it,
        atomically."""

    async def get_revision(self, revision_id: str) -> Revision | None: ...

    async def list_revisions(self, app_name: str) -> list[Revision]:
        """The app's revisions, newest first."""

    async def delete_revision(self, revision_id: str) -> None:
        """Deletes one revision (the caller checks that it is not live)."""

    async def list_apps(self) -> list[AppRecord]: ...

    async def set_scale(self, name: str, scale: AppConfig) -> None:
        """Replaces the app's scale overrides (no-op for an unknown app)."""

    # -- environments, secrets, API keys -----------------------------------------------

    async def create_environment(self, environment: EnvironmentRecord) -> bool:
        """Stores a new environment; False when one with that name exists."""

    async def list_environments(self) -> list[EnvironmentRecord]:
        """Stored environments by name ("main" is implicit)."""

    async def delete_environment(self, name: str) -> None:
        """Deletes the environment and its secrets (the caller deletes its apps)."""

    async def put_secrets(self, secrets: list[SecretRecord]) -> None:
        """Creates or replaces secrets (an update keeps `created_at`), atomically."""

    async def list_secrets(self, environment: str) -> list[SecretRecord]:
        """The environment's secrets by name (values encrypted)."""

    async def delete_secret(self, environment: str, name: str) -> bool:
        """False when there was no such secret."""

    async def create_key(self, key: KeyRecord) -> None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""

    async def revoke_key(self, key_id: str, revoked_at: float) -> bool:
        """False when there is no such key (revoking twice keeps the first time)."""

    async def delete_app(self, name: str) -> None:
        """Deletes the app, its revisions and its requests."""

    def insert_request(self, request: RequestRecord) -> Awaitable[None]:
        """Stores a new request durably: as it is, with its status and attempts, or, when
        it has an outcome and `completed_at`, completed, in one write (a request that ended
        before it was stored; never one of a SharedStore, which stores requests before they
        run)."""

    def mark_started(self, request_id: str, attempts: int) -> Awaitable[None]:
        """Records that attempt `attempts` started (IN_PROGRESS); never reopens a COMPLETED
        request."""

    def requeue(self, request_id: str, attempts: int) -> Awaitable[None]:
        """Puts a request back to IN_QUEUE, keeping its place (seq)."""

    def complete(self, request_id: str, outcome: Outcome, completed_at: float) -> Awaitable[None]:
        """Stores a request's outcome durably (status COMPLETED)."""

    async def get_request(self, request_id: str) -> RequestRecord | None: ...

    def webhook_done(self, request_id: str) -> Awaitable[None]:
        """Records that the request's webhook was delivered (or given up on)."""

    async def load_pending_webhooks(self) -> list[RequestRecord]:
        """Completed requests with a webhook URL whose delivery has not finished."""

    async def find_request_by_key(self, idempotency_key: str) -> str | None:
        """The id of the stored request made with this idempotency key, if any."""

    async def delete_completed_before(self, completed_before: float) -> int:
        """Deletes requests that completed before this wall-clock time; returns how many."""

    async def load_unfinished(self) -> list[RequestRecord]:
        """Requests not COMPLETED, in queue order (seq)."""

    async def max_seq(self) -> int:
        """The largest seq ever stored (0 when none)."""


class SharedStore(Store, Protocol):
    """A store that several servers share (PostgreSQL; docs/stores.md). After `join`, a
    request is held by at most one server at a time: a server runs only the requests it
    has claimed, and its writes about a request apply only while it holds it."""

    server_id: str

    def claim(self, request_id: str, attempts: int) -> Awaitable[bool]:
        """Takes a queued request for attempt `attempts`; False when another server holds
        it or it has completed."""

    def release(self, request_id: str) -> Awaitable[bool]:
        """Lets any server claim a queued request this server holds."""

    def complete_owned(
        self, request_id: str, outcome: Outcome, completed_at: float, *, queued: bool = False
    ) -> Awaitable[bool]:
        """Completes a request this server holds (or, with `queued`, one that waits in the
        queue); False otherwise."""

    def publish(self, event: ClusterEvent) -> Awaitable[None]:
        """Tells the other servers (after every write called before)."""

    def put_bundle(self, sha256: str, data: bytes) -> Awaitable[None]:
        """Keeps a deployed bundle for the other servers."""

    def live_servers(self) -> Awaitable[set[str]]:
        """The ids of the servers whose lease has not expired (this one included)."""

    # Scaling across servers (docs/stores.md, "Scaling across servers").

    def take_runner_slot(
        self, app_name: str, runner_id: str, limit: int | None,
    ) -> Awaitable[bool]:
        """Takes one of the app's runner slots for `runner_id` while fewer than `limit` are
        held by live servers (None: in any case); False (and this server is recorded as
        waiting for one) otherwise."""

    def free_runner_slot(self, runner_id: str) -> Awaitable[None]:
        """Gives a runner's slot back (idempotent)."""

    def hold_apps(
        self, names: list[str], lease_s: float, runner_ids: list[str],
    ) -> Awaitable[Mapping[str, tuple[int, int]]]:
        """Takes or renews for `lease_s` the scaling lease of each app in `names` that is
        free (never taken, expired, or its holder's server lease is gone) or this
        server's; gives back the slots of runners not in `runner_ids` that are older than
        `lease_s`. Returns the apps held, each with the runner slots other live servers
        hold and how many of them waited for a slot within `lease_s`."""

    def scaling_lead(self, app_name: str) -> Awaitable[tuple[str, float] | None]:
        """The live server that holds the app's scaling lease, and when the lease ends
        (seconds since the epoch, the database's clock); None when no live server holds it."""
