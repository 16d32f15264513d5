"""Stores: the contract in `base`, one module per implementation, and the table below."""

from __future__ import annotations

from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.memory import MemoryStore
from falrt.store.sqlite import SQLiteStore


def create_store(settings: ServerSettings) -> Store:
    """The store the settings name ("sqlite" or "memory")."""
    match settings.store:
        case "sqlite":
            return SQLiteStore(settings.db_path)
        case "memory":
            return MemoryStore()
        case other:
            raise ValueError(f"unknown store {other!r}: choose sqlite or memory")
