"""Stores: the contract in `base`, one module per implementation, and the table below."""

from __future__ import annotations

from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.memory import MemoryStore
from falrt.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def create_store(settings: ServerSettings) -> Store:
    """The store the settings name: "sqlite", "memory", or a PostgreSQL DSN.

    Raises ValueError for anything else.
    """
    match settings.store:
        case "sqlite":
            return SQLiteStore(settings.db_path)
        case "memory":
            return MemoryStore()
        case dsn if dsn.startswith(POSTGRES_SCHEMES):
            from falrt.store.postgres import PostgresStore  # asyncpg loads only when used

            return PostgresStore(dsn)
        case other:
            raise ValueError(
                f"unknown store {other!r}: choose sqlite, memory or a postgresql:// DSN"
            )
