"""Backends start and stop runners: the contract in `base`, one module per kind."""

from __future__ import annotations

from falrt.backends.base import Backend
from falrt.backends.process import ProcessBackend
from falrt.gpus import GpuAllocator


def create_backend(
    name: str, gpus: GpuAllocator | None = None, server_id: str = "", reconnect_s: float = 0.0
) -> Backend:
    """The backend a settings string names, handing out `gpus`; `reconnect_s`: how long the
    runners of a backend that outlive the server wait for the next one. Raises ValueError."""
    match name:
        case "process":
            return ProcessBackend(gpus)
        case "docker":
            from falrt.backends.docker import DockerBackend  # the docker SDK loads only here

            return DockerBackend(gpus, server_id, reconnect_s)
        case other:
            raise ValueError(f"unknown backend {other!r}: choose process or docker")
