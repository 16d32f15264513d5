"""SQLite store: one file, one writer thread, group commit.

All statements run on one dedicated thread that owns the connection. Callers on the event
loop hand it work and await a future; the thread takes every job waiting in its queue,
runs them in one transaction and commits once (group commit), so many concurrent submits
share one fsync. The journal is WAL with `synchronous=FULL`: a write that has been
acknowledged survives a crash of the process or of the machine. The file is opened in
exclusive locking mode: one server owns it while it runs.

A write that finds no space left (SQLITE_FULL) fails its whole batch with
`errors.StoreFullError` (SQLite has rolled the transaction back), and `on_full` is told.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from falrt import errors
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
    without_outcome,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
  name TEXT PRIMARY KEY, revision_id TEXT NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, scale BLOB, auth TEXT NOT NULL DEFAULT 'private');
CREATE TABLE IF NOT EXISTS environments (
  name TEXT PRIMARY KEY, description TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
  environment TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, PRIMARY KEY (environment, name));
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, scope TEXT NOT NULL, owner TEXT NOT NULL,
  description TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS revisions (
  revision_id TEXT PRIMARY KEY, app_name TEXT NOT NULL, created_at REAL NOT NULL,
  data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY, app_name TEXT NOT NULL, seq INTEGER NOT NULL,
  status INTEGER NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL,
  completed_at REAL, data BLOB NOT NULL, outcome BLOB, idempotency_key TEXT,
  webhook_pending INTEGER NOT NULL DEFAULT 0);
DROP INDEX IF EXISTS requests_unfinished;
CREATE INDEX IF NOT EXISTS requests_waiting ON requests (seq) WHERE status != 3;
CREATE INDEX IF NOT EXISTS requests_app ON requests (app_name);
CREATE INDEX IF NOT EXISTS requests_completed ON requests (completed_at)
  WHERE completed_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS requests_key ON requests (idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL, data BLOB NOT NULL);
"""
# What `probe` writes: a write of this size must fit for the store to count as writable.
PROBE_BYTES = 16 * 1024
# ... and its disk must have this much room left.
PROBE_FREE_BYTES = 1024 * 1024
# Columns added after the first release, for files created before them: (table, column).
MIGRATIONS = {
    ("requests", "idempotency_key"): "ALTER TABLE requests ADD COLUMN idempotency_key TEXT",
    ("requests", "webhook_pending"): "ALTER TABLE requests ADD COLUMN webhook_pending INTEGER "
                                     "NOT NULL DEFAULT 0",
    ("apps", "scale"): "ALTER TABLE apps ADD COLUMN scale BLOB",
    ("apps", "auth"): "ALTER TABLE apps ADD COLUMN auth TEXT NOT NULL DEFAULT 'private'",
}

class _Rows(NamedTuple):
    """One row for a statement; consecutive jobs with the same statement run as one
    `executemany` (hot-path writes: inserts, completions, re-queues)."""

    sql: str
    row: tuple[Any, ...]


_Work = Callable[[sqlite3.Connection], Any] | _Rows
_Job = tuple[_Work, asyncio.Future[Any]]
_Result = tuple[asyncio.Future[Any], Any, BaseException | None]
_encode = msgspec.msgpack.Encoder().encode
_revision = msgspec.msgpack.Decoder(Revision)
_request = msgspec.msgpack.Decoder(RequestRecord)
_outcome = msgspec.msgpack.Decoder(Outcome)


class SQLiteStore:
    """The embedded store. See the module docstring for the threading model."""

    def __init__(self, path: Path, *, max_batch: int = 512) -> None:
        self._path = path
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_full: Callable[[], None] | None = None
        self.on_batch: Callable[[int, float], None] | None = None  # (on the writer thread)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._writer, name="falrt-sqlite", daemon=True)
        self._thread.start()
        await self._run(lambda conn: None)  # the schema is in place once this returns

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def probe(self) -> None:
        """A write, and then at least PROBE_FREE_BYTES free on the disk: a small write can
        land in the WAL file's free room while the disk is still full."""
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT OR REPLACE INTO probe VALUES (1, ?, zeroblob(?))",
                         (time.time(), PROBE_BYTES))
            disk = os.statvfs(self._path.parent)
            return disk.f_bavail * disk.f_frsize

        free = await self._run(write)
        if free < PROBE_FREE_BYTES:
            raise errors.StoreFullError(
                f"the store's disk has {free} bytes free ({self._path.parent})")

    def _run(self, fn: Callable[[sqlite3.Connection], T] | _Rows) -> asyncio.Future[T]:
        if self._loop is None or self._thread is None:
            raise RuntimeError("store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, future))
        return future

    # -- the writer thread -------------------------------------------------------------

    def _writer(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            # Every job fails with the reason (open() among them) instead of waiting forever.
            while (batch := self._take_batch()) is not None:
                self._post([(future, None, exc) for _, future in batch])
            return
        try:
            while (batch := self._take_batch()) is not None:
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            # This thread's connection is the file's only user: exclusive locking keeps the
            # WAL index in this process's memory and takes the file lock once, so a commit
            # makes no lock or shared-memory calls. Durability is unchanged (synchronous=FULL
            # syncs the WAL at every commit); a second server on the same file fails to open
            # it ("database is locked") instead of sharing the queue.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            _migrate(conn)
            conn.executescript(SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _post(self, results: list[_Result]) -> None:
        """Hands finished jobs back to the loop: one wake-up for the whole batch."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve_all, results)

    def _take_batch(self) -> list[_Job] | None:
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # finish this batch, then stop
                break
            batch.append(job)
        return batch

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        began = time.perf_counter()
        try:
            if len(batch) == 1 and isinstance(batch[0][0], _Rows):
                # One statement commits on its own (autocommit): one call into SQLite
                # instead of three, so the thread takes the interpreter lock once, not three
                # times.
                results = [_execute_one(conn, batch[0])]
            else:
                results = _transaction(conn, batch)
        except sqlite3.Error as exc:
            failure = self._failure(exc)
            results = [(future, None, failure) for _, future in batch]
        else:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - began)
        self._post(results)

    def _failure(self, exc: sqlite3.Error) -> Exception:
        """What a batch that failed with `exc` answers: StoreFullError (and `on_full` told)
        when the disk is full, else `exc` (logged)."""
        if not _is_full(exc):
            log.error("sqlite commit failed", exc_info=exc)
            return exc
        assert self._loop is not None
        if self.on_full is not None:
            self._loop.call_soon_threadsafe(self.on_full)
        return errors.StoreFullError(
            f"the server's store has no space left ({exc}; {self._path.parent}): nothing "
            "was written; try again once the operator has freed space")

    # -- apps and revisions ------------------------------------------------------------

    async def deploy(self, revision: Revision, app: AppRecord) -> None:
        data = _encode(revision)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO revisions VALUES (?, ?, ?, ?)",  # a rollback's is stored
                (revision.revision_id, revision.app_name, revision.created_at, data),
            )
            conn.execute(
                "INSERT INTO apps VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "revision_id = excluded.revision_id, updated_at = excluded.updated_at, "
                "scale = excluded.scale, auth = excluded.auth",
                (app.name, app.revision_id, app.created_at, app.updated_at, _encode(app.scale),
                 app.auth),
            )

        await self._run(write)

    async def get_revision(self, revision_id: str) -> Revision | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT data FROM revisions WHERE revision_id = ?", (revision_id,)
            ).fetchone()
        )
        return None if row is None else _revision.decode(row[0])

    async def list_revisions(self, app_name: str) -> list[Revision]:
        rows = await self._run(lambda conn: conn.execute(
            "SELECT data FROM revisions WHERE app_name = ? ORDER BY created_at DESC",
            (app_name,)).fetchall())
        return [_revision.decode(row[0]) for row in rows]

    async def delete_revision(self, revision_id: str) -> None:
        await self._run(lambda conn: conn.execute(
            "DELETE FROM revisions WHERE revision_id = ?", (revision_id,)))

    async def list_apps(self) -> list[AppRecord]:
        rows = await self._run(lambda conn: conn.execute(
            "SELECT name, revision_id, created_at, updated_at, scale, auth FROM apps "
            "ORDER BY name").fetchall())
        return [AppRecord(name, revision_id, created_at, updated_at, _scale(scale), auth)
                for name, revision_id, created_at, updated_at, scale, auth in rows]

    async def set_scale(self, name: str, scale: AppConfig) -> None:
        data = _encode(scale)
        await self._run(lambda conn: conn.execute(
            "UPDATE apps SET scale = ? WHERE name = ?", (data, name)))

    # -- environments, secrets, API keys -----------------------------------------------

    async def create_environment(self, environment: EnvironmentRecord) -> bool:
        cursor = await self._run(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO environments VALUES (?, ?, ?)",
            (environment.name, environment.description, environment.created_at)))
        return bool(cursor.rowcount == 1)

    async def list_environments(self) -> list[EnvironmentRecord]:
        rows = await self._run(lambda conn: conn.execute(
            "SELECT name, description, created_at FROM environments ORDER BY name").fetchall())
        return [EnvironmentRecord(*row) for row in rows]

    async def delete_environment(self, name: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM environments WHERE name = ?", (name,))
            conn.execute("DELETE FROM secrets WHERE environment = ?", (name,))

        await self._run(write)

    async def put_secrets(self, secrets: list[SecretRecord]) -> None:
        rows = [(s.environment, s.name, s.value, s.created_at, s.updated_at) for s in secrets]
        await self._run(lambda conn: conn.executemany(
            "INSERT INTO secrets VALUES (?, ?, ?, ?, ?) ON CONFLICT(environment, name) DO UPDATE "
            "SET value = excluded.value, updated_at = excluded.updated_at", rows))

    async def list_secrets(self, environment: str) -> list[SecretRecord]:
        rows = await self._run(lambda conn: conn.execute(
            "SELECT environment, name, value, created_at, updated_at FROM secrets "
            "WHERE environment = ? ORDER BY name", (environment,)).fetchall())
        return [SecretRecord(*row) for row in rows]

    async def delete_secret(self, environment: str, name: str) -> bool:
        cursor = await self._run(lambda conn: conn.execute(
            "DELETE FROM secrets WHERE environment = ? AND name = ?", (environment, name)))
        return bool(cursor.rowcount == 1)

    async def create_key(self, key: KeyRecord) -> None:
        await self._run(lambda conn: conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.key_id, key.secret_hash, key.scope, key.owner, key.description,
             key.created_at, key.revoked_at)))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._run(lambda conn: conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone())
        return None if row is None else KeyRecord(*row)

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._run(lambda conn: conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at").fetchall())
        return [KeyRecord(*row) for row in rows]

    async def revoke_key(self, key_id: str, revoked_at: float) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at "
                         "IS NULL", (revoked_at, key_id))
            found = conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,))
            return found.fetchone() is not None

        return await self._run(write)

    async def delete_app(self, name: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table in ("apps WHERE name", "revisions WHERE app_name", "requests WHERE app_name"):
                conn.execute(f"DELETE FROM {table} = ?", (name,))

        await self._run(write)

    # -- requests ----------------------------------------------------------------------

    def insert_request(self, request: RequestRecord) -> asyncio.Future[None]:
        outcome = None if request.outcome is None else _encode(request.outcome)
        row = (request.request_id, request.app_name, request.seq, int(request.status),
               request.attempts, request.created_at, _encode(without_outcome(request)),
               request.idempotency_key or None, int(bool(request.webhook_url)),
               request.completed_at, outcome)
        return self._run(_Rows(
            "INSERT INTO requests (request_id, app_name, seq, status, attempts, "
            "created_at, data, idempotency_key, webhook_pending, completed_at, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        ))

    def webhook_done(self, request_id: str) -> asyncio.Future[None]:
        return self._run(_Rows(
            "UPDATE requests SET webhook_pending = 0 WHERE request_id = ?", (request_id,)))

    async def load_pending_webhooks(self) -> list[RequestRecord]:
        rows = await self._run(
            lambda conn: conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE webhook_pending = 1 "
                "AND status = ? ORDER BY completed_at",
                (int(Status.COMPLETED),),
            ).fetchall()
        )
        return [_request_from_row(row) for row in rows]

    def mark_started(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._set_status(request_id, Status.IN_PROGRESS, attempts)

    def requeue(self, request_id: str, attempts: int) -> asyncio.Future[None]:
        return self._set_status(request_id, Status.IN_QUEUE, attempts)

    def _set_status(self, request_id: str, status: Status, attempts: int) -> asyncio.Future[None]:
        return self._run(_Rows(
            "UPDATE requests SET status = ?, attempts = ? WHERE request_id = ? AND status != ?",
            (int(status), attempts, request_id, int(Status.COMPLETED)),
        ))

    def complete(
        self, request_id: str, outcome: Outcome, completed_at: float
    ) -> asyncio.Future[None]:
        data = _encode(outcome)
        return self._run(_Rows(
            "UPDATE requests SET status = ?, completed_at = ?, outcome = ? WHERE request_id = ?",
            (int(Status.COMPLETED), completed_at, data, request_id),
        ))

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._run(
            lambda conn: conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        )
        return None if row is None else _request_from_row(row)

    async def find_request_by_key(self, idempotency_key: str) -> str | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT request_id FROM requests WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def delete_completed_before(self, completed_before: float) -> int:
        cursor = await self._run(
            lambda conn: conn.execute(
                "DELETE FROM requests WHERE completed_at IS NOT NULL AND completed_at < ?",
                (completed_before,),
            )
        )
        return int(cursor.rowcount)

    async def load_unfinished(self) -> list[RequestRecord]:
        rows = await self._run(
            lambda conn: conn.execute(
                # (3, COMPLETED, written out: only then does SQLite use requests_waiting)
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE status != 3 ORDER BY seq",
            ).fetchall()
        )
        return [_request_from_row(row) for row in rows]

    async def max_seq(self) -> int:
        row = await self._run(
            lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM requests").fetchone()
        )
        return int(row[0])


_REQUEST_COLUMNS = "data, status, attempts, completed_at, outcome"


def _request_from_row(row: tuple[bytes, int, int, float | None, bytes | None]) -> RequestRecord:
    data, status, attempts, completed_at, outcome = row
    record = _request.decode(data)
    record.status = Status(status)
    record.attempts = attempts
    record.completed_at = completed_at
    record.outcome = None if outcome is None else _outcome.decode(outcome)
    return record


def _groups(batch: list[_Job]) -> Iterator[list[_Job]]:
    """Consecutive jobs with the same `_Rows` statement together; other jobs alone."""
    group: list[_Job] = []
    for job in batch:
        if group and not _same_statement(group[0][0], job[0]):
            yield group
            group = []
        group.append(job)
    if group:
        yield group


def _same_statement(a: _Work, b: _Work) -> bool:
    return isinstance(a, _Rows) and isinstance(b, _Rows) and a.sql == b.sql


def _transaction(conn: sqlite3.Connection, batch: list[_Job]) -> list[_Result]:
    """Runs the batch in one transaction. A full disk fails it whole (raised); another
    error of one job fails that job alone, or of the commit all of them (answered)."""
    results: list[_Result] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for group in _groups(batch):
            results.extend(_execute(conn, group))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if _is_full(exc):
            raise
        log.exception("sqlite commit failed")
        return [(future, None, exc) for _, future in batch]
    return results


def _is_full(exc: sqlite3.Error) -> bool:
    """The disk is full (SQLite then rolls back the statement or the transaction)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def _execute(conn: sqlite3.Connection, group: list[_Job]) -> list[_Result]:
    """Runs a group: many rows in one executemany; if that fails, each job on its own, so
    that one bad row fails alone (a full disk fails them all: raised)."""
    work = group[0][0]
    if isinstance(work, _Rows) and len(group) > 1:
        conn.execute("SAVEPOINT many")
        try:
            conn.executemany(work.sql, [job[0].row for job in group])  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise
            conn.execute("ROLLBACK TO many")
        else:
            conn.execute("RELEASE many")
            return [(future, None, None) for _, future in group]
        conn.execute("RELEASE many")
    return [_execute_one(conn, job) for job in group]


def _execute_one(conn: sqlite3.Connection, job: _Job) -> _Result:
    """Runs one job. A `_Rows` write answers None: its cursor is closed here, not kept
    alive by the future (the connection tracks every open cursor). A full disk is raised."""
    work, future = job
    try:
        if isinstance(work, _Rows):
            conn.execute(work.sql, work.row).close()
            return future, None, None
        value = work(conn)
    except sqlite3.Error as exc:
        if _is_full(exc):
            raise
        return future, None, exc
    return future, value, None


def _migrate(conn: sqlite3.Connection) -> None:
    for (table, column), statement in MIGRATIONS.items():
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if columns and column not in columns:  # (a new file: the schema creates everything)
            conn.execute(statement)


_config = msgspec.msgpack.Decoder(AppConfig)
_KEY_COLUMNS = "key_id, secret_hash, scope, owner, description, created_at, revoked_at"


def _scale(data: bytes | None) -> AppConfig:
    return AppConfig() if data is None else _config.decode(data)


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
