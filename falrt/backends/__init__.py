"""Backends start and stop runners: the contract in `base`, one module per kind."""

from __future__ import annotations

from falrt.backends.base import Backend
from falrt.backends.process import ProcessBackend
from falrt.gpus import GpuAllocator


def create_backend(
    name: str, gpus: GpuAllocator | None = None, server_id: str = "", reconnect_s: float = 0.0,
    ray_address: str = "auto", zygotes: bool = True,
) -> Backend:
    """The backend a settings string names, handing out `gpus`; `reconnect_s`: how long the
    runners of a backend that outlive the server wait for the next one; `ray_address`: the
    ray backend's cluster; `zygotes`: the process backend forks runners from warm templates.
    Raises ValueError (for ray without Ray installed: how to)."""
    match name:
        case "process":
            return ProcessBackend(gpus, zygotes)
        case "docker":
            from falrt.backends.docker import DockerBackend  # the docker SDK loads only here

            return DockerBackend(gpus, server_id, reconnect_s)
        case "ray":
            from falrt.backends.ray import RayBackend  # Ray loads only here

            return RayBackend(ray_address)
        case other:
            raise ValueError(f"unknown backend {other!r}: choose process, docker or ray")
