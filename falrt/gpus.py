"""The GPUs of this host, and which runner holds which.

`discover()` asks NVML (nvidia-ml-py) for the host's GPUs: name, memory, UUID, matched to
fal's machine types (`GPU-H100`, …). On a host without NVML (no driver, no GPU, this CI) the
inventory is empty and GPU machine types have no capacity. An explicit inventory file
(`falrt server --gpu-inventory FILE`, a JSON list of {"index", "uuid", "name",
"memory_bytes"}) replaces NVML: it describes GPUs for tests of the allocator, or a subset of
the host's GPUs for one server.

`GpuAllocator` hands out GPUs: a runner asks for a machine type and a count and gets that
many GPUs of the type that no other runner holds, or none; it gives them back when it ends.
An app with `runners_per_gpu = K` (a `GpuShare`) lets up to K of its one-GPU runners share
one GPU (time-sliced by CUDA, its memory shared): a runner process's CPU side (tokenising,
Python, one event loop) then stops being what bounds a fast GPU. Runners see their GPUs
through `CUDA_VISIBLE_DEVICES` (UUIDs).
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


@dataclass(frozen=True)
class GpuShare:
    """Runners of one app that may share a GPU (the app's `runners_per_gpu`): up to
    `runners` of `app`'s one-GPU runners on each GPU, never with another app's."""

    app: str
    runners: int = 1


class NoCapacityError(Exception):
    """No free GPUs of the machine type a runner asked for (the message says why)."""


@dataclass(frozen=True)
class _Hold:
    runner_id: str
    share: GpuShare | None


class GpuAllocator:
    """GPUs for runners: whole, or shared by up to `GpuShare.runners` runners of one app.
    Not thread-safe (loop-affine).

    The rule for a shared runner: a GPU nobody holds when there is one (each runner alone
    while GPUs last), else the GPU of its app with the fewest runners, below the limit."""

    def __init__(self, gpus: Iterable[Gpu]) -> None:
        self.gpus = list(gpus)
        self._holds: dict[str, list[_Hold]] = {}  # GPU uuid -> its runners

    def capacity(self, machine_type: str, count: int, share: GpuShare | None = None) -> str:
        """"" when `count` GPUs of the type are free now (for `share`), else why not."""
        of_type = [g for g in self.gpus if g.machine_type == machine_type]
        if not of_type:
            found = sorted({g.machine_type or g.name for g in self.gpus}) or ["none"]
            return (f"no capacity for {machine_type}: this host has no {machine_type} "
                    f"(its GPUs: {', '.join(found)})")
        usable = self._usable(of_type, share if count == 1 else None)
        if len(usable) < count:
            busy = sum(1 for g in of_type if self._holds.get(g.uuid))
            shared = (f" ({share.app} shares a GPU among {share.runners} runners, and each "
                      f"of its GPUs is full)" if share is not None and share.runners > 1 else "")
            return (f"no capacity for {machine_type}: {busy} of {len(of_type)} in use, "
                    f"{count} needed{shared}")
        return ""

    def acquire(self, machine_type: str, count: int, runner_id: str,
                share: GpuShare | None = None) -> list[Gpu]:
        """`count` GPUs of the type for `runner_id`; raises NoCapacityError."""
        reason = self.capacity(machine_type, count, share)
        if reason:
            raise NoCapacityError(reason)
        share = share if count == 1 and share is not None and share.runners > 1 else None
        usable = self._usable([g for g in self.gpus if g.machine_type == machine_type], share)
        taken = usable[:count]
        for gpu in taken:
            self._holds.setdefault(gpu.uuid, []).append(_Hold(runner_id, share))
        return taken

    def _usable(self, gpus: list[Gpu], share: GpuShare | None) -> list[Gpu]:
        """The GPUs a runner may take, best first: free ones, then (shared) the app's GPUs
        with room, fewest runners first."""
        free = [g for g in gpus if not self._holds.get(g.uuid)]
        if share is None or share.runners <= 1:
            return free
        joinable = [g for g in gpus if self._joinable(self._holds.get(g.uuid, []), share)]
        return free + sorted(joinable, key=lambda g: len(self._holds[g.uuid]))

    @staticmethod
    def _joinable(holds: list[_Hold], share: GpuShare) -> bool:
        if not holds or any(h.share is None or h.share.app != share.app for h in holds):
            return False
        limit = min([share.runners] + [h.share.runners for h in holds if h.share])
        return len(holds) < limit

    def hold(self, uuids: Iterable[str], runner_id: str, share: GpuShare | None = None) -> None:
        """Marks GPUs as `runner_id`'s: a runner adopted after a restart holds them still."""
        known = {g.uuid for g in self.gpus}
        for uuid in uuids:
            if uuid in known:
                self._holds.setdefault(uuid, []).append(_Hold(runner_id, share))

    def release(self, runner_id: str) -> None:
        for uuid in list(self._holds):
            kept = [h for h in self._holds[uuid] if h.runner_id != runner_id]
            if kept:
                self._holds[uuid] = kept
            else:
                del self._holds[uuid]

    def held_by(self, runner_id: str) -> list[Gpu]:
        return [g for g in self.gpus
                if any(h.runner_id == runner_id for h in self._holds.get(g.uuid, []))]


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
