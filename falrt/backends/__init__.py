"""Backends start and stop runners: the contract in `base`, one module per kind."""

from __future__ import annotations

from falrt.backends.base import Backend
from falrt.backends.process import ProcessBackend
from falrt.gpus import GpuAllocator


def create_backend(name: str, gpus: GpuAllocator | None = None) -> Backend:
    """The backend a settings string names, handing out `gpus`."""
    match name:
        case "process":
            return ProcessBackend(gpus)
        case other:
            raise ValueError(f"unknown backend {other!r}: choose process")
