"""The GPU allocator's sharing rule (`runners_per_gpu`): which GPU a shared runner takes,
that another app never joins, and that a runner's end frees its place."""

from __future__ import annotations

import pytest

from falrt.backends.ray import resources
from falrt.gpus import Gpu, GpuAllocator, GpuShare, NoCapacityError

pytestmark = pytest.mark.unit

H100 = 80 * 2**30


def allocator(count: int) -> GpuAllocator:
    return GpuAllocator(Gpu(n, f"GPU-{n}", "NVIDIA H100 80GB HBM3", H100) for n in range(count))


def uuids(gpus: list[Gpu]) -> list[str]:
    return [g.uuid for g in gpus]


def test_a_shared_runner_takes_a_free_gpu_first_then_the_least_shared_of_its_app() -> None:
    gpus, share = allocator(2), GpuShare("embed", 3)
    placed = [uuids(gpus.acquire("GPU-H100", 1, f"r{n}", share)) for n in range(6)]
    # Alone while GPUs last, then spread: never three on one GPU while another has one.
    assert placed == [["GPU-0"], ["GPU-1"], ["GPU-0"], ["GPU-1"], ["GPU-0"], ["GPU-1"]]
    assert "each of its GPUs is full" in gpus.capacity("GPU-H100", 1, share)
    with pytest.raises(NoCapacityError):
        gpus.acquire("GPU-H100", 1, "r6", share)
    gpus.release("r2")
    assert uuids(gpus.acquire("GPU-H100", 1, "r6", share)) == ["GPU-0"]
    assert [uuids(gpus.held_by(r)) for r in ("r0", "r6")] == [["GPU-0"], ["GPU-0"]]


def test_no_other_app_and_no_whole_gpu_runner_joins_a_shared_gpu() -> None:
    gpus = allocator(1)
    gpus.acquire("GPU-H100", 1, "a1", GpuShare("a", 4))
    assert gpus.capacity("GPU-H100", 1, GpuShare("b", 4)) == (
        "no capacity for GPU-H100: 1 of 1 in use, 1 needed (b shares a GPU among 4 runners, "
        "and each of its GPUs is full)")
    assert gpus.capacity("GPU-H100", 1) == "no capacity for GPU-H100: 1 of 1 in use, 1 needed"
    gpus.release("a1")
    gpus.acquire("GPU-H100", 1, "whole")  # a runner with its GPU whole: nobody joins it
    assert gpus.capacity("GPU-H100", 1, GpuShare("a", 4)) != ""


def test_the_smaller_limit_holds_when_an_apps_limit_changes_between_deploys() -> None:
    gpus = allocator(1)
    gpus.acquire("GPU-H100", 1, "old", GpuShare("a", 2))
    gpus.acquire("GPU-H100", 1, "new", GpuShare("a", 4))  # 2 on it: the old runner's limit
    assert gpus.capacity("GPU-H100", 1, GpuShare("a", 4)) != ""
    gpus.release("old")
    assert gpus.capacity("GPU-H100", 1, GpuShare("a", 4)) == ""


def test_a_runner_adopted_after_a_restart_keeps_its_share() -> None:
    gpus = allocator(1)
    gpus.hold(["GPU-0", "GPU-unknown"], "survivor", GpuShare("a", 2))
    assert uuids(gpus.acquire("GPU-H100", 1, "next", GpuShare("a", 2))) == ["GPU-0"]
    assert gpus.capacity("GPU-H100", 1, GpuShare("a", 2)) != ""


def test_ray_asks_for_a_fraction_of_a_gpu_for_a_shared_runner() -> None:
    assert resources("GPU-H100", 1, GpuShare("a", 4)) == {
        "falrt-GPU-H100": 0.25, "CPU": 0.0, "GPU": 0.25}
    assert resources("GPU-H100", 2) == {"falrt-GPU-H100": 1.0, "CPU": 0.0, "GPU": 2.0}
