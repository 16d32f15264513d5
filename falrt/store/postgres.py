"""PostgreSQL store (asyncpg): one batching writer task, a small pool for reads.

Every write goes through one writer task, on a connection of the pool it holds (and takes
again from the pool after a failure): it takes every write waiting in its queue (up to
`max_batch`), runs them in order in one transaction, with consecutive writes of the same
statement sent as one `executemany`, commits once, and only then resolves their futures
(group commit). So a write returns once it is committed, and many concurrent submits share
one round trip and one commit. A batch of one statement runs without BEGIN and COMMIT (a
statement alone is atomic): one round trip instead of three, which is most of a request's
write latency at low concurrency. If the batch's transaction fails, its writes are retried
one transaction each, so a bad write (a duplicate request id) fails alone and the others
still land. A write the database refuses for lack of disk space (DiskFullError) fails with
`errors.StoreFullError`, and `on_full` is told.

Reads run on the pool and see every write that has returned. Tables live in the schema
`falrt`, created on `open` (idempotent, under an advisory lock so that servers starting
together do not race). Records are msgpack in bytea columns, as in the SQLite store; the
columns that queries filter or order on (status, seq, attempts, app_name) are real columns.

Several servers may share the database (falrt/server/control/cluster.py, docs/stores.md): after
`join`, queued requests are claimed before they run, writes about a request apply only
while this server holds it, and what changed is announced with NOTIFY in the same
transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec

import falrt.store.scaling_leases as scaling_leases
from falrt import errors
from falrt.store.records import (
    AppConfig,
    AppRecord,
    ClusterEvent,
    ClusterEventKind,
    EnvironmentRecord,
    KeyRecord,
    Outcome,
    RequestRecord,
    Revision,
    SecretRecord,
    Status,
    without_outcome,
)

log = logging.getLogger(__name__)
# What `probe` writes: a write of this size must fit for the store to count as writable.
PROBE_BYTES = 16 * 1024

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS falrt;
CREATE TABLE IF NOT EXISTS falrt.apps (
  name TEXT PRIMARY KEY, revision_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.revisions (
  revision_id TEXT PRIMARY KEY, app_name TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.requests (
  request_id TEXT PRIMARY KEY, app_name TEXT NOT NULL, seq BIGINT NOT NULL,
  status SMALLINT NOT NULL, attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  completed_at DOUBLE PRECISION, data BYTEA NOT NULL, outcome BYTEA, idempotency_key TEXT);
ALTER TABLE falrt.requests ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
ALTER TABLE falrt.requests ADD COLUMN IF NOT EXISTS webhook_pending BOOLEAN NOT NULL
  DEFAULT false;
CREATE INDEX IF NOT EXISTS requests_seq ON falrt.requests (seq);
CREATE INDEX IF NOT EXISTS requests_unfinished ON falrt.requests (seq) WHERE status <> 3;
CREATE INDEX IF NOT EXISTS requests_app ON falrt.requests (app_name);
CREATE INDEX IF NOT EXISTS requests_completed ON falrt.requests (completed_at)
  WHERE completed_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS requests_key ON falrt.requests (idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS revisions_app ON falrt.revisions (app_name);
ALTER TABLE falrt.requests ADD COLUMN IF NOT EXISTS owner TEXT;
CREATE INDEX IF NOT EXISTS requests_owner ON falrt.requests (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS falrt.servers (
  server_id TEXT PRIMARY KEY, lease_until DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.bundles (sha256 TEXT PRIMARY KEY, data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.probe (
  id INTEGER PRIMARY KEY, at DOUBLE PRECISION NOT NULL, data BYTEA NOT NULL);
ALTER TABLE falrt.apps ADD COLUMN IF NOT EXISTS scale BYTEA;
ALTER TABLE falrt.apps ADD COLUMN IF NOT EXISTS auth TEXT NOT NULL DEFAULT 'private';
CREATE TABLE IF NOT EXISTS falrt.environments (
  name TEXT PRIMARY KEY, description TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.secrets (
  environment TEXT NOT NULL, name TEXT NOT NULL, value BYTEA NOT NULL,
  created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (environment, name));
CREATE TABLE IF NOT EXISTS falrt.api_keys (
  key_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, scope TEXT NOT NULL, owner TEXT NOT NULL,
  description TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  revoked_at DOUBLE PRECISION);
"""
# Any constant will do: it only has to be the same for every falrt server.
_SCHEMA_LOCK = 0x66616C7274

# A rollback deploys a revision that is stored already: it stays as it is.
_INSERT_REVISION = (
    "INSERT INTO falrt.revisions VALUES ($1, $2, $3, $4) ON CONFLICT (revision_id) DO NOTHING"
)
_UPSERT_APP = (
    "INSERT INTO falrt.apps (name, revision_id, created_at, updated_at, scale, auth) VALUES "
    "($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET revision_id = "
    "EXCLUDED.revision_id, updated_at = EXCLUDED.updated_at, scale = EXCLUDED.scale, "
    "auth = EXCLUDED.auth"
)
_APP_COLUMNS = "name, revision_id, created_at, updated_at, scale, auth"
_KEY_COLUMNS = "key_id, secret_hash, scope, owner, description, created_at, revoked_at"
_config = msgspec.msgpack.Decoder(AppConfig)
_INSERT_REQUEST = (
    "INSERT INTO falrt.requests (request_id, app_name, seq, status, attempts, created_at, data, "
    "idempotency_key, webhook_pending, completed_at, outcome) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_WEBHOOK_DONE = "UPDATE falrt.requests SET webhook_pending = false WHERE request_id = $1"
_REQUEUE = (
    "UPDATE falrt.requests SET status = $1, attempts = $2 WHERE request_id = $3 AND status <> $4"
)
_COMPLETE = (
    "UPDATE falrt.requests SET status = $1, completed_at = $2, outcome = $3 WHERE request_id = $4"
)
_REQUEST_COLUMNS = "data, status, attempts, completed_at, outcome, owner"

# Several servers on one database (docs/stores.md): fenced writes and notifications.
CHANNEL = "falrt_events"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', $1)"
_NOW = "extract(epoch from clock_timestamp())"
_INSERT_REQUEST_SHARED = (
    "WITH i AS (INSERT INTO falrt.requests (request_id, app_name, seq, status, attempts, "
    "created_at, data, idempotency_key, webhook_pending, owner) VALUES ($1, $2, $3, $4, $5, $6, "
    f"$7, $8, $9, $10) RETURNING status) SELECT pg_notify('{CHANNEL}', $11) FROM i "
    "WHERE i.status = 1"
)
_REQUEUE_OWNED = (
    "UPDATE falrt.requests SET status = 1, attempts = $2 WHERE request_id = $1 "
    "AND status <> 3 AND owner = $3"
)
_CLAIM = (
    "UPDATE falrt.requests SET status = 2, attempts = $2, owner = $3 WHERE request_id = $1 "
    "AND status = 1 AND (owner IS NULL OR owner = $3) RETURNING 1"
)
_RELEASE = (
    "UPDATE falrt.requests SET owner = NULL WHERE request_id = $1 AND status = 1 "
    "AND owner = $2 RETURNING 1"
)
_COMPLETE_OWNED = (
    "UPDATE falrt.requests SET status = 3, completed_at = $2, outcome = $3, owner = $4 "
    "WHERE request_id = $1 AND status <> 3 AND (owner = $4 OR (status = 1 AND $5)) RETURNING 1"
)
_ORPHANS = (
    f"SELECT request_id, {_REQUEST_COLUMNS} FROM falrt.requests WHERE status <> 3 AND owner "
    "IS NOT NULL AND owner NOT IN (SELECT server_id FROM falrt.servers) FOR UPDATE SKIP LOCKED"
)
_event = msgspec.json.Encoder().encode

_encode = msgspec.msgpack.Encoder().encode
_revision = msgspec.msgpack.Decoder(Revision)
_request = msgspec.msgpack.Decoder(RequestRecord)
_outcome = msgspec.msgpack.Decoder(Outcome)

Statement = tuple[str, tuple[Any, ...]]
Step = Callable[[Any], Awaitable[Any]]  # called with the batch's (pooled) connection


class _Write(NamedTuple):
    """Statements that commit together, and the future resolved once they have. A write
    may end with a `step`, run on the batch's connection after its statements: its value
    resolves `done` (conditional writes that report whether they applied)."""

    statements: tuple[Statement, ...]
    done: asyncio.Future[Any]
    step: Step | None = None


class _Conditional:
    """A write that applies or not (its SQL ends with RETURNING), reports which, and when it
    applies announces `event` to the other servers: in one statement, so that alone in a
    batch it needs no transaction."""

    __slots__ = ("args", "sql")

    def __init__(self, sql: str, args: tuple[Any, ...], event: ClusterEvent) -> None:
        self.sql = (f"WITH applied AS ({sql}) SELECT pg_notify('{CHANNEL}', ${len(args) + 1}) "
                    "FROM applied")
        self.args = (*args, _event(event).decode())

    async def __call__(self, conn: Any) -> bool:
        return len(await conn.fetch(self.sql, *self.args)) > 0


class PostgresStore:
    """The shared store. See the module docstring for the writer and durability model."""

    def __init__(self, dsn: str, *, max_batch: int = 512, pool_size: int = 5) -> None:
        self._dsn = dsn
        self._max_batch = max_batch
        self._pool_size = pool_size  # the writer's connection and the readers'
        self._pool: asyncpg.Pool | None = None
        self._writer_conn: Any = None  # the writer's pooled connection, while it holds one
        self._writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.server_id = ""  # set by `join`
        self.on_full: Callable[[], None] | None = None
        self.on_batch: Callable[[int, float], None] | None = None

    async def open(self) -> None:
        """Connects, creates the schema if it is missing and starts the writer task."""
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._pool_size
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA + scaling_leases.SCHEMA)
        self._writer = asyncio.create_task(self._write_loop(), name="falrt-postgres-writer")

    async def close(self) -> None:
        """Commits every write already queued, then stops the writer and the pool."""
        if self._writer is not None:
            self._writes.put_nowait(None)
            await self._writer
            self._writer = None
        if self._writer_conn is not None and self._pool is not None:
            await self._pool.release(self._writer_conn)
            self._writer_conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def probe(self) -> None:
        await self._submit((
            "INSERT INTO falrt.probe VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET "
            "at = excluded.at, data = excluded.data", (time.time(), bytes(PROBE_BYTES))))

    def _submit(self, *statements: Statement, step: Step | None = None) -> asyncio.Future[Any]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(_Write(statements, done, step))
        return done

    @property
    def _readers(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # -- the writer task ---------------------------------------------------------------

    async def _write_loop(self) -> None:
        while (batch := await self._take_batch()) is not None:
            await self._commit(batch)

    async def _take_batch(self) -> list[_Write] | None:
        first = await self._writes.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._max_batch and not self._writes.empty():
            write = self._writes.get_nowait()
            if write is None:
                self._writes.put_nowait(None)  # finish this batch, then stop
                break
            batch.append(write)
        return batch

    async def _commit(self, batch: list[_Write]) -> None:
        """Commits the batch in one transaction, or else each write in its own."""
        began = time.perf_counter()
        try:
            results = await self._run_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch, self._failure(exc))
                return
            log.warning("postgres batch of %d failed (%s); committing one by one",
                        len(batch), exc)
            for write in batch:
                await self._commit([write])
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - began)
        for write, result in zip(batch, results, strict=True):
            if not write.done.done():
                write.done.set_result(result)

    def _failure(self, exc: Exception) -> Exception:
        """What a write that failed with `exc` answers: StoreFullError (and `on_full` told)
        when the database has no disk space left, else `exc`."""
        if not isinstance(exc, asyncpg.exceptions.DiskFullError):
            return exc
        if self.on_full is not None:
            self.on_full()
        return errors.StoreFullError(
            f"the server's store has no space left ({exc}): nothing was written; try again "
            "once the operator has freed space")

    async def _run_batch(self, batch: list[_Write]) -> list[Any]:
        """Runs the batch in order; returns each write's result (its step's value, or None).
        After a failure the writer's connection goes back to the pool (which drops it if it
        is broken) and the next batch takes one again."""
        if self._writer_conn is None:
            self._writer_conn = await self._readers.acquire()
        conn = self._writer_conn
        runs = _runs(batch)
        try:
            if len(runs) == 1 and len(runs[0][1]) == 1 and runs[0][2] is None:
                await conn.execute(runs[0][0], *runs[0][1][0])  # one statement: autocommit
                return [None]
            if len(runs) == 1 and isinstance(step := batch[0].step, _Conditional):
                return [await step(conn)]  # one statement too
            async with conn.transaction():
                return await self._run(conn, batch, runs)
        except BaseException:
            self._writer_conn = None
            await self._readers.release(conn)
            raise

    @staticmethod
    async def _run(
        conn: Any, batch: list[_Write], runs: list[tuple[str, list[tuple[Any, ...]], int | None]]
    ) -> list[Any]:
        results: list[Any] = [None] * len(batch)
        for sql, rows, index in runs:
            if index is not None:
                step = batch[index].step
                assert step is not None
                results[index] = await step(conn)
            elif len(rows) == 1:
                await conn.execute(sql, *rows[0])
            else:
                await conn.executemany(sql, rows)
        return results

    # -- apps and revisions ------------------------------------------------------------

    async def deploy(self, revision: Revision, app: AppRecord) -> None:
        await self._submit(
            (_INSERT_REVISION, (revision.revision_id, revision.app_name, revision.created_at,
                                _encode(revision))),
            (_UPSERT_APP, (app.name, app.revision_id, app.created_at, app.updated_at,
                           _encode(app.scale), app.auth)),
            *self._announce(ClusterEvent(ClusterEventKind.APP, self.server_id, app=app.name)),
        )

    async def get_revision(self, revision_id: str) -> Revision | None:
        data = await self._readers.fetchval(
            "SELECT data FROM falrt.revisions WHERE revision_id = $1", revision_id
        )
        return None if data is None else _revision.decode(data)

    async def list_revisions(self, app_name: str) -> list[Revision]:
        rows = await self._readers.fetch(
            "SELECT data FROM falrt.revisions WHERE app_name = $1 ORDER BY created_at DESC",
            app_name)
        return [_revision.decode(row["data"]) for row in rows]

    async def delete_revision(self, revision_id: str) -> None:
        await self._submit(
            ("DELETE FROM falrt.revisions WHERE revision_id = $1", (revision_id,)))

    async def list_apps(self) -> list[AppRecord]:
        rows = await self._readers.fetch(f"SELECT {_APP_COLUMNS} FROM falrt.apps ORDER BY name")
        return [_app_from_row(row) for row in rows]

    async def set_scale(self, name: str, scale: AppConfig) -> None:
        await self._submit(
            ("UPDATE falrt.apps SET scale = $2 WHERE name = $1", (name, _encode(scale))),
            *self._announce(ClusterEvent(ClusterEventKind.APP, self.server_id, app=name)),
        )

    # -- environments, secrets, API keys -----------------------------------------------

    async def create_environment(self, environment: EnvironmentRecord) -> bool:
        status = await self._readers.execute(
            "INSERT INTO falrt.environments VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            environment.name, environment.description, environment.created_at)
        return bool(status == "INSERT 0 1")

    async def list_environments(self) -> list[EnvironmentRecord]:
        rows = await self._readers.fetch(
            "SELECT name, description, created_at FROM falrt.environments ORDER BY name")
        return [EnvironmentRecord(*row) for row in rows]

    async def delete_environment(self, name: str) -> None:
        await self._submit(
            ("DELETE FROM falrt.environments WHERE name = $1", (name,)),
            ("DELETE FROM falrt.secrets WHERE environment = $1", (name,)),
        )

    async def put_secrets(self, secrets: list[SecretRecord]) -> None:
        await self._submit(*(
            ("INSERT INTO falrt.secrets VALUES ($1, $2, $3, $4, $5) ON CONFLICT "
             "(environment, name) DO UPDATE SET value = EXCLUDED.value, "
             "updated_at = EXCLUDED.updated_at",
             (s.environment, s.name, s.value, s.created_at, s.updated_at))
            for s in secrets))

    async def list_secrets(self, environment: str) -> list[SecretRecord]:
        rows = await self._readers.fetch(
            "SELECT environment, name, value, created_at, updated_at FROM falrt.secrets "
            "WHERE environment = $1 ORDER BY name", environment)
        return [SecretRecord(r["environment"], r["name"], bytes(r["value"]), r["created_at"],
                             r["updated_at"]) for r in rows]

    async def delete_secret(self, environment: str, name: str) -> bool:
        status = await self._readers.execute(
            "DELETE FROM falrt.secrets WHERE environment = $1 AND name = $2", environment, name)
        return bool(status == "DELETE 1")

    async def create_key(self, key: KeyRecord) -> None:
        await self._readers.execute(
            "INSERT INTO falrt.api_keys VALUES ($1, $2, $3, $4, $5, $6, $7)", key.key_id,
            key.secret_hash, key.scope, key.owner, key.description, key.created_at,
            key.revoked_at)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._readers.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM falrt.api_keys WHERE key_id = $1", key_id)
        return None if row is None else KeyRecord(*row)

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._readers.fetch(
            f"SELECT {_KEY_COLUMNS} FROM falrt.api_keys ORDER BY created_at")
        return [KeyRecord(*row) for row in rows]

    async def revoke_key(self, key_id: str, revoked_at: float) -> bool:
        status = await self._readers.execute(
            "UPDATE falrt.api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE key_id = $1",
            key_id, revoked_at)
        return bool(status == "UPDATE 1")

    async def delete_app(self, name: str) -> None:
        await self._submit(
            ("DELETE FROM falrt.apps WHERE name = $1", (name,)),
            ("DELETE FROM falrt.revisions WHERE app_name = $1", (name,)),
            ("DELETE FROM falrt.requests WHERE app_name = $1", (name,)),
            *self._announce(ClusterEvent(ClusterEventKind.APP, self.server_id, app=name)),
        )

    # -- requests ----------------------------------------------------------------------

    def insert_request(self, request: RequestRecord) -> asyncio.Future[None]:
        row = (
            request.request_id, request.app_name, request.seq, int(request.status),
            request.attempts, request.created_at, _encode(without_outcome(request)),
            request.idempotency_key or None, bool(request.webhook_url),
        )
        if not self.server_id:
            outcome = None if request.outcome is None else _encode(request.outcome)
            return self._submit((_INSERT_REQUEST, (*row, request.completed_at, outcome)))
        if request.outcome is not None:
            raise ValueError("a shared store inserts requests before they run, never completed")
        # Shared: a request dispatched at once is inserted as claimed by this server; a
        # queued one is announced (in the same statement) so that any server may claim it.
        owner = self.server_id if request.status is Status.IN_PROGRESS else None
        queued = _event(ClusterEvent(
            ClusterEventKind.QUEUED, self.server_id, request.request_id)).decode()
        return self._submit((_INSERT_REQUEST_SHARED, (*row, owner, queued)))

    def webhook_done(self, request_id: str) -> asyncio.Future[None]:
        return self._submit((_WEBHOOK_DONE, (request_id,)))

    async def load_pending_webhooks(self) -> list[RequestRecord]:
        """Shared: only the webhooks this server owes (it completed those requests)."""
        mine = "AND owner = $1 " if self.server_id else ""
        rows = await self._readers.fetch(
            f"SELECT {_REQUEST_COLUMNS} FROM falrt.requests WHERE webhook_pending "
            f"AND status = 3 {mine}ORDER BY completed_at", *([self.server_id] if mine else [])
        )
        return [_request_from_row(row) for row in rows]

    def mark_started(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._submit(
            (_REQUEUE, (int(Status.IN_PROGRESS), attempts, request_id, int(Status.COMPLETED)))
        )

    def requeue(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        """Shared: only while this server holds the request, which it keeps (see release)."""
        if self.server_id:
            return self._submit((_REQUEUE_OWNED, (request_id, attempts, self.server_id)))
        return self._submit(
            (_REQUEUE, (int(Status.IN_QUEUE), attempts, request_id, int(Status.COMPLETED)))
        )

    def complete(
        self, request_id: str, outcome: Outcome, completed_at: float
    ) -> asyncio.Future[None]:
        return self._submit(
            (_COMPLETE, (int(Status.COMPLETED), completed_at, _encode(outcome), request_id))
        )

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._readers.fetchrow(
            f"SELECT {_REQUEST_COLUMNS} FROM falrt.requests WHERE request_id = $1", request_id
        )
        return None if row is None else _request_from_row(row)

    async def find_request_by_key(self, idempotency_key: str) -> str | None:
        request_id = await self._readers.fetchval(
            "SELECT request_id FROM falrt.requests WHERE idempotency_key = $1", idempotency_key
        )
        return None if request_id is None else str(request_id)

    async def delete_completed_before(self, completed_before: float) -> int:
        """Runs outside the writer (housekeeping is not latency-bound); committed on return."""
        status = await self._readers.execute(
            "DELETE FROM falrt.requests WHERE completed_at IS NOT NULL AND completed_at < $1",
            completed_before,
        )
        return int(status.split()[-1])  # "DELETE <count>"

    async def load_unfinished(self) -> list[RequestRecord]:
        rows = await self._readers.fetch(
            f"SELECT {_REQUEST_COLUMNS} FROM falrt.requests WHERE status <> 3 ORDER BY seq"
        )
        return [_request_from_row(row) for row in rows]

    async def max_seq(self) -> int:
        value = await self._readers.fetchval("SELECT COALESCE(MAX(seq), 0) FROM falrt.requests")
        return int(value)

    # -- several servers on one database -------------------------------------------------

    async def join(self, server_id: str, lease_s: float) -> None:
        """Registers this server with a lease; from now on writes are fenced by it and
        announced to the other servers. Requests that an older falrt left IN_PROGRESS
        with no holder become this server's (it resumes them)."""
        async with self._readers.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO falrt.servers VALUES ($1, {_NOW} + $2) ON CONFLICT (server_id) "
                "DO UPDATE SET lease_until = EXCLUDED.lease_until", server_id, lease_s)
            await conn.execute(
                "UPDATE falrt.requests SET owner = $1 WHERE owner IS NULL AND status = 2",
                server_id)
            await scaling_leases.leave(conn, server_id)  # its runners of before are gone
        self.server_id = server_id

    async def renew(self, lease_s: float) -> bool:
        """Extends this server's lease; False when it had expired and another server has
        taken over its requests (the caller must stop)."""
        status = await self._readers.execute(
            f"UPDATE falrt.servers SET lease_until = {_NOW} + $2 WHERE server_id = $1",
            self.server_id, lease_s)
        return bool(status == "UPDATE 1")

    async def live_servers(self) -> set[str]:
        rows = await self._readers.fetch(
            f"SELECT server_id FROM falrt.servers WHERE lease_until >= {_NOW}")
        return {row["server_id"] for row in rows}

    async def leave(self) -> None:
        """Drops the lease at a clean stop: what this server still holds is taken over,
        and its apps' scaling leases and runner slots are free at once."""
        async with self._readers.acquire() as conn:
            await scaling_leases.leave(conn, self.server_id)
            await conn.execute("DELETE FROM falrt.servers WHERE server_id = $1", self.server_id)

    # -- scaling across servers (falrt/store/scaling_leases.py) --------------------------

    async def take_runner_slot(self, app_name: str, runner_id: str, limit: int | None) -> bool:
        async with self._readers.acquire() as conn:
            return await scaling_leases.take_slot(
                conn, self.server_id, app_name, runner_id, limit)

    async def free_runner_slot(self, runner_id: str) -> None:
        await self._readers.execute(
            "DELETE FROM falrt.runner_slots WHERE runner_id = $1", runner_id)

    async def hold_apps(
        self, names: list[str], lease_s: float, runner_ids: list[str],
    ) -> dict[str, scaling_leases.Elsewhere]:
        async with self._readers.acquire() as conn:
            return await scaling_leases.hold(conn, self.server_id, names, lease_s, runner_ids)

    async def scaling_lead(self, app_name: str) -> tuple[str, float] | None:
        async with self._readers.acquire() as conn:
            return await scaling_leases.lead(conn, app_name)

    async def listen(
        self, on_event: Callable[[ClusterEvent], None], on_lost: Callable[[], None]
    ) -> asyncpg.Connection:
        """Calls `on_event` for every event another server publishes, in commit order, on a
        connection of its own (the caller closes it); `on_lost` when that connection
        breaks (events may have been missed)."""
        decode = msgspec.json.Decoder(ClusterEvent).decode
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "falrt-events"})
        conn.add_termination_listener(lambda _conn: on_lost())

        def received(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            try:
                event = decode(str(payload))
            except msgspec.ValidationError as exc:  # e.g. a kind a newer server sends
                log.warning("ignored a cluster event this server does not know (%s): %.200s",
                            exc, payload)
                return
            if event.sender != self.server_id:
                on_event(event)

        await conn.add_listener(CHANNEL, received)
        return conn

    def _announce(self, event: ClusterEvent) -> tuple[Statement, ...]:
        return ((_NOTIFY, (_event(event).decode(),)),) if self.server_id else ()

    def publish(self, event: ClusterEvent) -> asyncio.Future[None]:
        """Sends an event to the other servers, after every write called before it."""
        return self._submit(*self._announce(event))

    def claim(self, request_id: str, attempts: int) -> asyncio.Future[bool]:
        """Takes a queued request for attempt `attempts` (IN_PROGRESS, held by this
        server); False when another server holds it or it has completed."""
        claimed = ClusterEvent(
            ClusterEventKind.CLAIMED, self.server_id, request_id, attempts=attempts)
        return self._submit(step=_Conditional(
            _CLAIM, (request_id, attempts, self.server_id), claimed))

    def release(self, request_id: str) -> asyncio.Future[bool]:
        """Lets any server claim a queued request this server holds (after its backoff)."""
        queued = ClusterEvent(ClusterEventKind.QUEUED, self.server_id, request_id)
        return self._submit(step=_Conditional(
            _RELEASE, (request_id, self.server_id), queued))

    def complete_owned(
        self, request_id: str, outcome: Outcome, completed_at: float, *, queued: bool = False
    ) -> asyncio.Future[bool]:
        """Completes a request this server holds, or with `queued` one that waits in the
        queue (a cancel, a flush, a missed start deadline); False otherwise: another
        server holds it or it has completed (a request completes once)."""
        completed = ClusterEvent(ClusterEventKind.COMPLETED, self.server_id, request_id)
        return self._submit(step=_Conditional(
            _COMPLETE_OWNED, (request_id, completed_at, _encode(outcome), self.server_id, queued),
            completed))

    def put_bundle(self, sha256: str, data: bytes) -> asyncio.Future[None]:
        """Stores a deployed bundle for the other servers (content-addressed)."""
        return self._submit((
            "INSERT INTO falrt.bundles VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
            (sha256, data)))

    async def get_bundle(self, sha256: str) -> bytes | None:
        data = await self._readers.fetchval(
            "SELECT data FROM falrt.bundles WHERE sha256 = $1", sha256)
        return None if data is None else bytes(data)

    async def get_app(self, name: str) -> AppRecord | None:
        row = await self._readers.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM falrt.apps WHERE name = $1", name)
        return None if row is None else _app_from_row(row)

    async def take_over(
        self, give_up: Callable[[RequestRecord], Outcome | None]
    ) -> tuple[list[str], list[str], list[RequestRecord]]:
        """Takes over the requests of servers whose lease expired (or that left).

        A request that was IN_PROGRESS there had its attempt cut: it is completed with the
        outcome `give_up` returns, or else queued again (any server may claim it); one
        waiting out a retry backoff is queued again. Webhooks those servers still owed
        become this server's. Returns the ids queued, the ids completed, and the completed
        requests whose webhooks are now owed here.
        """
        queued: list[str] = []
        completed: list[str] = []
        owed_here: list[RequestRecord] = []
        async with self._readers.acquire() as conn, conn.transaction():
            await conn.execute(f"DELETE FROM falrt.servers WHERE lease_until < {_NOW}")
            for row in await conn.fetch(_ORPHANS):
                record = _request_from_row(row)
                outcome = give_up(record) if record.status is Status.IN_PROGRESS else None
                if outcome is None:
                    await conn.execute(
                        "UPDATE falrt.requests SET status = 1, owner = NULL "
                        "WHERE request_id = $1", record.request_id)
                    queued.append(record.request_id)
                else:
                    await conn.execute(
                        f"UPDATE falrt.requests SET status = 3, completed_at = {_NOW}, "
                        "outcome = $2, owner = $3 WHERE request_id = $1",
                        record.request_id, _encode(outcome), self.server_id)
                    completed.append(record.request_id)
                    if record.webhook_url:
                        record.outcome = outcome
                        owed_here.append(record)
            owed = await conn.fetch(
                "UPDATE falrt.requests SET owner = $1 WHERE status = 3 AND webhook_pending "
                "AND owner IS NOT NULL AND owner NOT IN (SELECT server_id FROM falrt.servers) "
                f"RETURNING {_REQUEST_COLUMNS}", self.server_id)
            await scaling_leases.forget_gone(conn)  # (after the requests: the lock order)
            events = [ClusterEvent(ClusterEventKind.QUEUED, self.server_id, i) for i in queued]
            events += [ClusterEvent(ClusterEventKind.COMPLETED, self.server_id, i)
                       for i in completed]
            if events:
                await conn.executemany(_NOTIFY, [(_event(e).decode(),) for e in events])
        return queued, completed, [*(_request_from_row(row) for row in owed), *owed_here]


def _runs(
    batch: Sequence[_Write],
) -> list[tuple[str, list[tuple[Any, ...]], int | None]]:
    """The batch's statements in order, consecutive ones with the same SQL grouped; a
    write's step comes after its statements as ("", [], index of the write)."""
    runs: list[tuple[str, list[tuple[Any, ...]], int | None]] = []
    for index, write in enumerate(batch):
        for sql, args in write.statements:
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(args)
            else:
                runs.append((sql, [args], None))
        if write.step is not None:
            runs.append(("", [], index))
    return runs


def _app_from_row(row: asyncpg.Record) -> AppRecord:
    scale = row["scale"]
    return AppRecord(row["name"], row["revision_id"], row["created_at"], row["updated_at"],
                     scale=AppConfig() if scale is None else _config.decode(scale),
                     auth=row["auth"])


def _request_from_row(row: asyncpg.Record) -> RequestRecord:
    record = _request.decode(row["data"])
    record.status = Status(row["status"])
    record.attempts = row["attempts"]
    record.completed_at = row["completed_at"]
    record.owner = row["owner"] or ""
    outcome = row["outcome"]
    record.outcome = None if outcome is None else _outcome.decode(outcome)
    return record


def _resolve(batch: list[_Write], error: BaseException) -> None:
    for write in batch:
        if not write.done.done():
            write.done.set_exception(error)
