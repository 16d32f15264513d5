"""Backends start and stop runners: the contract in `base`, one module per kind."""

from __future__ import annotations

from falrt.backends.base import Backend
from falrt.backends.process import ProcessBackend


def create_backend(name: str) -> Backend:
    """The backend a settings string names."""
    match name:
        case "process":
            return ProcessBackend()
        case other:
            raise ValueError(f"unknown backend {other!r}: choose process")
