"""The runner's GPUs as NVML sees them, for its heartbeats: memory used and utilisation.

The runner's GPUs are the UUIDs in its CUDA_VISIBLE_DEVICES (the server hands out whole
GPUs by UUID). Without NVML (no driver, no GPU) or without GPUs, there is nothing to send.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from falrt.v1 import common_pb2

log = logging.getLogger(__name__)


class GpuProbe:
    """Reads NVML for the runner's GPUs. Blocking calls (about 0.1 ms each): call it off
    the event loop."""

    def __init__(self, visible: str | None = None) -> None:
        uuids = [u for u in (visible if visible is not None
                             else os.environ.get("CUDA_VISIBLE_DEVICES", "")).split(",")
                 if u.startswith("GPU-")]
        self._handles: list[tuple[str, Any]] = []
        if not uuids:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [(u, pynvml.nvmlDeviceGetHandleByUUID(u)) for u in uuids]
        except Exception as exc:  # no NVML here, or a GPU it does not know
            log.info("no GPU figures for heartbeats: %s", exc)
            self._handles = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def read(self) -> list[common_pb2.GpuStats]:
        stats = []
        for uuid, handle in self._handles:
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                busy = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except Exception as exc:
                log.warning("reading GPU %s failed: %s", uuid, exc)
                continue
            stats.append(common_pb2.GpuStats(
                uuid=uuid, memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total), utilization_percent=int(busy)))
        return stats
