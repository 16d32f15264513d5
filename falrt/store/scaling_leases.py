"""Scaling across servers on PostgreSQL: app scaling leases and runner slots (SQL).

The rules are in docs/stores.md, "Scaling across servers". `PostgresStore` delegates to
these functions; each runs in one transaction on a connection of its read pool, timed by
the database's clock. None is on the path of a request: a slot is taken once per runner
start, given back once per runner end, and the leases are renewed a few times per lease.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.pool

    # A connection of the pool, or one of its own.
    Conn = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

# No index on these small tables (a row per app, runner or waiting server): a CREATE INDEX
# IF NOT EXISTS locks its table even when the index exists, and a server starting while
# another takes over would then deadlock with it.
SCHEMA = """
CREATE TABLE IF NOT EXISTS falrt.app_leases (
  app_name TEXT PRIMARY KEY, holder TEXT NOT NULL, lease_until DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.runner_slots (
  runner_id TEXT PRIMARY KEY, app_name TEXT NOT NULL, server_id TEXT NOT NULL,
  taken_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS falrt.slot_waits (
  app_name TEXT NOT NULL, server_id TEXT NOT NULL, since DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (app_name, server_id));
"""
_NOW = "extract(epoch from clock_timestamp())"
_LIVE = f"(SELECT server_id FROM falrt.servers WHERE lease_until >= {_NOW})"
# Serialises the slot takes of one app (a count, then an insert).
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('falrt-slots:' || $1))"
_HELD = (f"SELECT count(*) FROM falrt.runner_slots WHERE app_name = $1 AND server_id IN {_LIVE}")
_TAKE = (f"INSERT INTO falrt.runner_slots VALUES ($1, $2, $3, {_NOW}) "
         "ON CONFLICT (runner_id) DO NOTHING")
_WAIT = (f"INSERT INTO falrt.slot_waits VALUES ($1, $2, {_NOW}) ON CONFLICT (app_name, "
         "server_id) DO UPDATE SET since = EXCLUDED.since")
_HOLD = (
    "INSERT INTO falrt.app_leases AS l (app_name, holder, lease_until) "
    f"SELECT n, $2, {_NOW} + $3 FROM unnest($1::text[]) AS n ON CONFLICT (app_name) DO UPDATE "
    "SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until "
    f"WHERE l.holder = $2 OR l.lease_until < {_NOW} OR l.holder NOT IN {_LIVE} "
    "RETURNING app_name"
)
_ELSEWHERE = (
    "SELECT n, (SELECT count(*) FROM falrt.runner_slots s WHERE s.app_name = n "
    f"AND s.server_id <> $2 AND s.server_id IN {_LIVE}), "
    "(SELECT count(*) FROM falrt.slot_waits w WHERE w.app_name = n AND w.server_id <> $2 "
    f"AND w.since >= {_NOW} - $3 AND w.server_id IN {_LIVE}) FROM unnest($1::text[]) AS n"
)
# Slots of this server whose runner it no longer has (a give-back that failed); only those
# older than the lease, so that a slot taken while the renewal runs is not among them.
_FORGOTTEN = ("DELETE FROM falrt.runner_slots WHERE server_id = $1 AND NOT (runner_id = "
              f"ANY($2::text[])) AND taken_at < {_NOW} - $3")


# The app's lease holder while the lease runs and its server lives.
_LEAD = ("SELECT holder, lease_until FROM falrt.app_leases WHERE app_name = $1 AND "
         f"lease_until >= {_NOW} AND holder IN {_LIVE}")


class Elsewhere(NamedTuple):
    """For an app this server leads: what the other live servers hold and want."""

    alive: int  # runner slots they hold
    waiting: int  # servers that waited for a slot within the last lease


async def take_slot(
    conn: Conn, server_id: str, app_name: str, runner_id: str,
    limit: int | None,
) -> bool:
    """Takes a slot when fewer than `limit` of the app's slots are held by live servers
    (None: in any case). A refusal records that this server waits for one."""
    async with conn.transaction():
        await conn.execute(_LOCK, app_name)
        if limit is not None and await conn.fetchval(_HELD, app_name) >= limit:
            await conn.execute(_WAIT, app_name, server_id)
            return False
        await conn.execute(_TAKE, runner_id, app_name, server_id)
        await conn.execute("DELETE FROM falrt.slot_waits WHERE app_name = $1 AND "
                           "server_id = $2", app_name, server_id)
        return True


async def hold(
    conn: Conn, server_id: str, names: list[str], lease_s: float,
    runner_ids: list[str],
) -> dict[str, Elsewhere]:
    """Takes or renews the scaling lease of each app in `names` whose lease is this
    server's, expired, or held by a server that is gone; frees this server's slots of
    runners not in `runner_ids`. Returns the apps it holds now."""
    async with conn.transaction():
        await conn.execute(_FORGOTTEN, server_id, runner_ids, lease_s)
        held = [row[0] for row in await conn.fetch(_HOLD, names, server_id, lease_s)]
        rows = await conn.fetch(_ELSEWHERE, held, server_id, lease_s)
    return {row[0]: Elsewhere(int(row[1]), int(row[2])) for row in rows}


async def lead(conn: Conn, app_name: str) -> tuple[str, float] | None:
    """The server that holds the app's scaling lease and when it ends; None when no live
    server holds it now."""
    row = await conn.fetchrow(_LEAD, app_name)
    return None if row is None else (str(row["holder"]), float(row["lease_until"]))


async def leave(conn: Conn, server_id: str) -> None:
    """A clean stop: this server's leases, slots and waits go at once."""
    async with conn.transaction():
        for table, column in (("app_leases", "holder"), ("runner_slots", "server_id"),
                              ("slot_waits", "server_id")):
            await conn.execute(f"DELETE FROM falrt.{table} WHERE {column} = $1", server_id)


async def forget_gone(conn: Conn) -> None:
    """Slots and waits of servers whose lease is gone (inside take-over's transaction)."""
    for table in ("runner_slots", "slot_waits"):
        await conn.execute(f"DELETE FROM falrt.{table} WHERE server_id NOT IN "
                           "(SELECT server_id FROM falrt.servers)")


__all__ = ["SCHEMA", "Elsewhere", "forget_gone", "hold", "lead", "leave", "take_slot"]
