"""The ray backend's pure rules: what a runner asks Ray for, and when no node can host it
(`capacity`), as tables of inputs -> answers. No Ray runs here."""

from __future__ import annotations

import sys

import pytest

from falrt.backends import create_backend
from falrt.backends.ray import missing, resources, unreachable
from falrt.backends.ray_node import gpu_uuids
from falrt.gpus import Gpu
from falrt.settings import advertised

pytestmark = pytest.mark.unit

GIB = 2.0**30


@pytest.mark.parametrize(("machine_type", "num_gpus", "expected"), [
    ("S", 0, {"falrt-S": 1.0, "CPU": 1.0, "memory": GIB}),
    ("XS", 0, {"falrt-XS": 1.0, "CPU": 0.5, "memory": GIB / 2}),
    ("L", 3, {"falrt-L": 1.0, "CPU": 4.0, "memory": 15 * GIB}),  # (GPUs: GPU types only)
    ("GPU-H100", 0, {"falrt-GPU-H100": 1.0, "CPU": 0.0, "GPU": 1.0}),  # at least one GPU
    ("GPU-H100", 2, {"falrt-GPU-H100": 1.0, "CPU": 0.0, "GPU": 2.0}),
])
def test_a_runner_asks_for_one_unit_of_its_type_and_the_types_resources(
    machine_type: str, num_gpus: int, expected: dict[str, float]
) -> None:
    assert resources(machine_type, num_gpus) == expected


CPU_NODE = {"CPU": 4.0, "memory": 8 * GIB, "falrt-S": 4.0}
GPU_NODE = {"CPU": 16.0, "memory": 64 * GIB, "GPU": 1.0, "falrt-GPU-H100": 1.0}
HEAD = {"memory": 8 * GIB}  # no CPUs, no falrt-*: hosts no runner


@pytest.mark.parametrize(("machine_type", "num_gpus", "nodes", "fits"), [
    ("S", 0, [HEAD, CPU_NODE], True),
    ("S", 0, [HEAD, GPU_NODE], False),  # no node has falrt-S
    ("M", 0, [CPU_NODE], False),  # falrt-M: none
    ("S", 0, [{**CPU_NODE, "CPU": 0.5}], False),  # its falrt-S, but too few CPUs
    ("S", 0, [{**CPU_NODE, "memory": GIB / 2}], False),  # ... too little memory
    ("GPU-H100", 1, [CPU_NODE, GPU_NODE], True),
    ("GPU-H100", 2, [GPU_NODE, GPU_NODE], False),  # two GPUs, but on two nodes
    ("GPU-A100", 1, [GPU_NODE], False),
    ("S", 0, [], False),  # no live node at all
])
def test_no_capacity_is_a_type_no_live_node_could_ever_host(
    machine_type: str, num_gpus: int, nodes: list[dict[str, float]], fits: bool
) -> None:
    reason = missing(resources(machine_type, num_gpus), nodes, machine_type)
    assert (reason == "") is fits
    if not fits:
        assert reason.startswith(f"no capacity for {machine_type}: no node of the Ray cluster")
        assert f"falrt-{machine_type}" in reason  # says which resource to give nodes


@pytest.mark.parametrize(("advertise", "port", "expected"), [
    ("", 50051, ""),  # not given: runners dial the listen address
    ("10.0.0.5:50051", 41000, "10.0.0.5:50051"),
    ("10.0.0.5:0", 41000, "10.0.0.5:41000"),  # port 0: the port bound
    ("falrt.internal", 41000, "falrt.internal:41000"),
    ("[fd00::5]:50051", 41000, "[fd00::5]:50051"),
])
def test_the_advertised_address_is_what_runners_dial(
    advertise: str, port: int, expected: str
) -> None:
    assert advertised(advertise, port) == expected


def test_the_ray_backend_without_ray_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # (an import of it raises ImportError)
    with pytest.raises(ValueError, match=r"pip install 'falrt\[ray\]'"):
        create_backend("ray", ray_address="auto")


H200 = [Gpu(0, "GPU-aaaa", "NVIDIA H200", 141 * 2**30),
        Gpu(1, "GPU-bbbb", "NVIDIA H200", 141 * 2**30)]


@pytest.mark.parametrize(("ray_ids", "gpus", "expected"), [
    (["1"], H200, ["GPU-bbbb"]),  # Ray's device index -> NVML's UUID
    (["0", "1"], H200, ["GPU-aaaa", "GPU-bbbb"]),
    (["GPU-bbbb"], H200, ["GPU-bbbb"]),  # a node started with UUIDs in CUDA_VISIBLE_DEVICES
    (["0"], [], ["0"]),  # no NVML on the node: Ray's id as it is
    (["5"], H200, ["5"]),  # an index NVML does not list: as it is
    ([], H200, []),  # a CPU machine type
])
def test_a_ray_runners_gpus_are_named_by_nvml_uuid_as_the_server_names_them(
    ray_ids: list[str], gpus: list[Gpu], expected: list[str]
) -> None:
    assert gpu_uuids(ray_ids, gpus) == expected


def test_a_cluster_that_does_not_answer_is_no_capacity_for_every_type_and_says_why() -> None:
    reason = unreachable("ray://head:10001", 16.4, "Ray Client is not connected")
    assert reason == ("no capacity: the Ray cluster at ray://head:10001 has not answered for "
                      "16 s (is its head down?): Ray Client is not connected")
    assert unreachable("head:6379", 20, "").endswith("(is its head down?)")
