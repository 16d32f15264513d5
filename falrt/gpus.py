"""The GPUs of this host, and which runner holds which.

`discover()` asks NVML (nvidia-ml-py) for the host's GPUs: name, memory, UUID, matched to
fal's machine types (`GPU-H100`, …). On a host without NVML (no driver, no GPU, this CI) the
inventory is empty and GPU machine types have no capacity. An explicit inventory file
(`falrt server --gpu-inventory FILE`, a JSON list of {"index", "uuid", "name",
"memory_bytes"}) replaces NVML: it describes GPUs for tests of the allocator, or a subset of
the host's GPUs for one server.

`GpuAllocator` hands out whole GPUs: a runner asks for a machine type and a count and gets
that many GPUs of the type that no other runner holds, or none; it gives them back when it
ends. Runners see their GPUs through `CUDA_VISIBLE_DEVICES` (UUIDs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# NVML names (lowercased, spaces removed) to fal's machine types; the first match wins.
_TYPES = (
    ("h200", "GPU-H200"), ("h100", "GPU-H100"), ("b200", "GPU-B200"), ("a100", "GPU-A100"),
    ("rtxpro6000", "GPU-RTXPRO6000"), ("l40", "GPU-L40"), ("rtx5090", "GPU-RTX5090"),
    ("rtx4090", "GPU-RTX4090"), ("a6000", "GPU-A6000"),
)


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_bytes: int

    @property
    def machine_type(self) -> str:
        return machine_type_of(self.name)


def machine_type_of(name: str) -> str:
    """fal's machine type for an NVML device name ("" when falrt has no type for it)."""
    key = name.lower().replace(" ", "").replace("-", "")
    return next((kind for part, kind in _TYPES if part in key), "")


def discover(inventory: Path | None = None) -> list[Gpu]:
    """The host's GPUs: from `inventory` when given, else from NVML (empty without it)."""
    if inventory is not None:
        return [Gpu(int(g["index"]), str(g["uuid"]), str(g["name"]), int(g["memory_bytes"]))
                for g in json.loads(inventory.read_text())]
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no GPUs: NVML is not available here (%s)", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(Gpu(index, _text(pynvml.nvmlDeviceGetUUID(handle)),
                            _text(pynvml.nvmlDeviceGetName(handle)),
                            int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NoCapacityError(Exception):
    """No free GPUs of the machine type a runner asked for (the message says why)."""


class GpuAllocator:
    """Whole GPUs for runners, never one GPU for two. Not thread-safe (loop-affine)."""

    def __init__(self, gpus: Iterable[Gpu]) -> None:
        self.gpus = list(gpus)
        self._holder: dict[str, str] = {}  # GPU uuid -> runner id

    def capacity(self, machine_type: str, count: int) -> str:
        """"" when `count` GPUs of the type are free now, else why not."""
        of_type = [g for g in self.gpus if g.machine_type == machine_type]
        if not of_type:
            found = sorted({g.machine_type or g.name for g in self.gpus}) or ["none"]
            return (f"no capacity for {machine_type}: this host has no {machine_type} "
                    f"(its GPUs: {', '.join(found)})")
        free = [g for g in of_type if g.uuid not in self._holder]
        if len(free) < count:
            return (f"no capacity for {machine_type}: {len(of_type) - len(free)} of "
                    f"{len(of_type)} in use, {count} needed")
        return ""

    def acquire(self, machine_type: str, count: int, runner_id: str) -> list[Gpu]:
        """`count` free GPUs of the type for `runner_id`; raises NoCapacityError."""
        reason = self.capacity(machine_type, count)
        if reason:
            raise NoCapacityError(reason)
        free = [g for g in self.gpus
                if g.machine_type == machine_type and g.uuid not in self._holder][:count]
        for gpu in free:
            self._holder[gpu.uuid] = runner_id
        return free

    def hold(self, uuids: Iterable[str], runner_id: str) -> None:
        """Marks GPUs as `runner_id`'s: a runner adopted after a restart holds them still."""
        known = {g.uuid for g in self.gpus}
        for uuid in uuids:
            if uuid in known:
                self._holder[uuid] = runner_id

    def release(self, runner_id: str) -> None:
        for uuid in [u for u, holder in self._holder.items() if holder == runner_id]:
            del self._holder[uuid]

    def held_by(self, runner_id: str) -> list[Gpu]:
        return [g for g in self.gpus if self._holder.get(g.uuid) == runner_id]


@dataclass(frozen=True)
class GpuSample:
    """One GPU's figures now, as NVML reports them (falrt_gpu_* metrics)."""

    index: int
    uuid: str
    name: str
    utilization_percent: int  # of NVML's last sample period, busy
    memory_used_bytes: int
    memory_total_bytes: int


class GpuMonitor:
    """Reads the utilisation and memory of the host's GPUs from NVML, which it keeps
    initialised from `open` to `close`. `open` returns None without GPUs or without NVML
    (then there is nothing to report). `sample` takes microseconds per GPU; a GPU that
    fails to answer (it fell off the bus) is left out of that sample."""

    def __init__(self, nvml: Any, gpus: list[tuple[Gpu, Any]]) -> None:
        self._nvml = nvml
        self._gpus = gpus

    @classmethod
    def open(cls, gpus: Iterable[Gpu]) -> GpuMonitor | None:
        """Blocking (NVML's initialisation may take a moment)."""
        gpus = list(gpus)
        if not gpus:
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no module, no driver: no figures
            log.info("no GPU metrics: NVML is not available here (%s)", exc)
            return None
        handles = []
        for gpu in gpus:
            try:
                handles.append((gpu, pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)))
            except pynvml.NVMLError as exc:  # an inventory file may name GPUs NVML lacks
                log.info("no metrics for GPU %s: %s", gpu.uuid, exc)
        if not handles:
            pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handles)

    def sample(self) -> list[GpuSample]:
        samples = []
        for gpu, handle in self._gpus:
            try:
                busy = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except self._nvml.NVMLError as exc:
                log.warning("GPU %s did not answer NVML: %s", gpu.uuid, exc)
                continue
            samples.append(GpuSample(gpu.index, gpu.uuid, gpu.name, int(busy),
                                     int(memory.used), int(memory.total)))
        return samples

    def close(self) -> None:
        self._nvml.nvmlShutdown()
