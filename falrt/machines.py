"""Machine types, as fal names them: CPU tiers and GPU types (fal-semantics section 10).

A runner asks for one (an app may list several, tried in order); a backend places it or
says why it cannot (`Backend.capacity`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuTier:
    cpus: float
    memory_bytes: int


_GIB = 1024**3
CPU_TIERS = {
    "XS": CpuTier(0.5, _GIB // 2),
    "S": CpuTier(1, _GIB),
    "M": CpuTier(2, 2 * _GIB),
    "L": CpuTier(4, 15 * _GIB),
    "XL": CpuTier(8, 30 * _GIB),
}
GPU_TYPES = (
    "GPU-A100", "GPU-L40", "GPU-H100", "GPU-RTXPRO6000", "GPU-H200", "GPU-B200",
    "GPU-RTX4090", "GPU-RTX5090", "GPU-A6000",
)
ALL = (*CPU_TIERS, *GPU_TYPES)


def check(name: str) -> None:
    """Raises ValueError for a name that is not a machine type."""
    if name not in CPU_TIERS and name not in GPU_TYPES:
        raise ValueError(f"unknown machine type {name!r}: use one of {', '.join(ALL)}")


def is_gpu(name: str) -> bool:
    return name in GPU_TYPES
