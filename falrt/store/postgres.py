"""PostgreSQL store (asyncpg): one batching writer task, a small pool for reads.

Every write goes through one writer task that owns no connection of its own: it takes
every write waiting in its queue (up to `max_batch`), runs them in order in one
transaction on one pooled connection, with consecutive writes of the same statement sent
as one `executemany`, commits once, and only then resolves their futures (group commit).
So a write returns once it is committed, and many concurrent submits share one round trip
and one commit. If the batch's transaction fails, its writes are retried one transaction
each, so a bad write (a duplicate request id) fails alone and the others still land.

Reads run on the pool and see every write that has returned. Tables live in the schema
`falrt`, created on `open` (idempotent, under an advisory lock so that servers starting
together do not race). Records are msgpack in bytea columns, as in the SQLite store; the
columns that queries filter or order on (status, seq, attempts, app_name) are real columns.

Several servers may open the same database, but the store does not claim requests: each
server loads and dispatches the whole queue (see docs/stores.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec

from falrt.store.records import AppRecord, Outcome, RequestRecord, Revision, Status

log = logging.getLogger(__name__)

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
"""
# Any constant will do: it only has to be the same for every falrt server.
_SCHEMA_LOCK = 0x66616C7274

_INSERT_REVISION = "INSERT INTO falrt.revisions VALUES ($1, $2, $3, $4)"
_UPSERT_APP = (
    "INSERT INTO falrt.apps VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
    "revision_id = EXCLUDED.revision_id, updated_at = EXCLUDED.updated_at"
)
_INSERT_REQUEST = (
    "INSERT INTO falrt.requests (request_id, app_name, seq, status, attempts, created_at, data, "
    "idempotency_key, webhook_pending) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_WEBHOOK_DONE = "UPDATE falrt.requests SET webhook_pending = false WHERE request_id = $1"
_REQUEUE = (
    "UPDATE falrt.requests SET status = $1, attempts = $2 WHERE request_id = $3 AND status <> $4"
)
_COMPLETE = (
    "UPDATE falrt.requests SET status = $1, completed_at = $2, outcome = $3 WHERE request_id = $4"
)
_REQUEST_COLUMNS = "data, status, attempts, completed_at, outcome"

_encode = msgspec.msgpack.Encoder().encode
_revision = msgspec.msgpack.Decoder(Revision)
_request = msgspec.msgpack.Decoder(RequestRecord)
_outcome = msgspec.msgpack.Decoder(Outcome)

Statement = tuple[str, tuple[Any, ...]]


class _Write(NamedTuple):
    """Statements that commit together, and the future resolved once they have."""

    statements: tuple[Statement, ...]
    done: asyncio.Future[None]


class PostgresStore:
    """The shared store. See the module docstring for the writer and durability model."""

    def __init__(self, dsn: str, *, max_batch: int = 512, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._max_batch = max_batch
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connects, creates the schema if it is missing and starts the writer task."""
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._pool_size
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        self._writer = asyncio.create_task(self._write_loop(), name="falrt-postgres-writer")

    async def close(self) -> None:
        """Commits every write already queued, then stops the writer and the pool."""
        if self._writer is not None:
            self._writes.put_nowait(None)
            await self._writer
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _submit(self, *statements: Statement) -> asyncio.Future[None]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(_Write(statements, done))
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
        try:
            await self._run_in_transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch, exc)
                return
            log.warning("postgres batch of %d failed (%s); committing one by one",
                        len(batch), exc)
            for write in batch:
                await self._commit([write])
            return
        _resolve(batch, None)

    async def _run_in_transaction(self, batch: list[_Write]) -> None:
        async with self._readers.acquire() as conn, conn.transaction():
            for sql, rows in _runs(batch):
                if len(rows) == 1:
                    await conn.execute(sql, *rows[0])
                else:
                    await conn.executemany(sql, rows)

    # -- apps and revisions ------------------------------------------------------------

    async def deploy(self, revision: Revision, app: AppRecord) -> None:
        await self._submit(
            (_INSERT_REVISION, (revision.revision_id, revision.app_name, revision.created_at,
                                _encode(revision))),
            (_UPSERT_APP, (app.name, app.revision_id, app.created_at, app.updated_at)),
        )

    async def get_revision(self, revision_id: str) -> Revision | None:
        data = await self._readers.fetchval(
            "SELECT data FROM falrt.revisions WHERE revision_id = $1", revision_id
        )
        return None if data is None else _revision.decode(data)

    async def list_apps(self) -> list[AppRecord]:
        rows = await self._readers.fetch(
            "SELECT name, revision_id, created_at, updated_at FROM falrt.apps ORDER BY name"
        )
        return [AppRecord(*row) for row in rows]

    async def delete_app(self, name: str) -> None:
        await self._submit(
            ("DELETE FROM falrt.apps WHERE name = $1", (name,)),
            ("DELETE FROM falrt.revisions WHERE app_name = $1", (name,)),
            ("DELETE FROM falrt.requests WHERE app_name = $1", (name,)),
        )

    # -- requests ----------------------------------------------------------------------

    def insert_request(self, request: RequestRecord) -> asyncio.Future[None]:
        return self._submit((_INSERT_REQUEST, (
            request.request_id, request.app_name, request.seq, int(request.status),
            request.attempts, request.created_at, _encode(request),
            request.idempotency_key or None, bool(request.webhook_url),
        )))

    def webhook_done(self, request_id: str) -> asyncio.Future[None]:
        return self._submit((_WEBHOOK_DONE, (request_id,)))

    async def load_pending_webhooks(self) -> list[RequestRecord]:
        rows = await self._readers.fetch(
            f"SELECT {_REQUEST_COLUMNS} FROM falrt.requests WHERE webhook_pending "
            "AND status = 3 ORDER BY completed_at"
        )
        return [_request_from_row(row) for row in rows]

    def mark_started(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._submit(
            (_REQUEUE, (int(Status.IN_PROGRESS), attempts, request_id, int(Status.COMPLETED)))
        )

    def requeue(self, request_id: str, attempts: int) -> asyncio.Future[None]:
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


def _runs(batch: Sequence[_Write]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The batch's statements in order, consecutive ones with the same SQL grouped."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for write in batch:
        for sql, args in write.statements:
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(args)
            else:
                runs.append((sql, [args]))
    return runs


def _request_from_row(row: asyncpg.Record) -> RequestRecord:
    record = _request.decode(row["data"])
    record.status = Status(row["status"])
    record.attempts = row["attempts"]
    record.completed_at = row["completed_at"]
    outcome = row["outcome"]
    record.outcome = None if outcome is None else _outcome.decode(outcome)
    return record


def _resolve(batch: list[_Write], error: BaseException | None) -> None:
    for write in batch:
        if write.done.done():
            continue
        if error is None:
            write.done.set_result(None)
        else:
            write.done.set_exception(error)
