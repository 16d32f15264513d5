"""GPUs: the inventory, whole GPUs per runner (shared only by an app's `runners_per_gpu`),
and what waits says why.

This host has no GPU and no NVML: the real inventory is empty. The allocator is tested with
an explicit inventory file describing GPUs (`falrt server --gpu-inventory`), which is how a
server is told about GPUs without NVML; the runners really start, with the GPUs they were
given in CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from falrt.client import SyncClient
from falrt.client.control import ControlClient
from falrt.gpus import Gpu, GpuAllocator, NoCapacityError, discover, machine_type_of
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.test_failures import waiting_reason

pytestmark = pytest.mark.e2e

H100 = 80 * 2**30
INVENTORY = [
    {"index": 0, "uuid": "GPU-h100-aaaa", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": H100},
    {"index": 1, "uuid": "GPU-h100-bbbb", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": H100},
    {"index": 2, "uuid": "GPU-a100-cccc", "name": "NVIDIA A100-SXM4-40GB",
     "memory_bytes": 40 * 2**30},
]

APP = '''
import os

import msgspec
import falrt


class In(msgspec.Struct):
    gate: str = ""


class Out(msgspec.Struct):
    visible: str
    runner: str


class OnGpu(falrt.App):
    app_name = "{name}"
    machine_type = {machine_type!r}
    num_gpus = {num_gpus}
    runners_per_gpu = {share}
    max_concurrency = 3
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        return Out(visible=os.environ["CUDA_VISIBLE_DEVICES"],
                   runner=os.environ["FALRT_RUNNER_ID"])
'''


def test_this_host_has_no_gpus_and_names_map_to_machine_types() -> None:
    assert discover() == []  # no NVML here: an empty inventory, no error
    assert [machine_type_of(n) for n in (
        "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "NVIDIA L40S",
        "NVIDIA B200", "NVIDIA GeForce RTX 4090", "NVIDIA RTX PRO 6000 Blackwell",
        "Tesla T4")] == ["GPU-H100", "GPU-H200", "GPU-A100", "GPU-L40", "GPU-B200",
                         "GPU-RTX4090", "GPU-RTXPRO6000", ""]


def test_the_allocator_hands_out_whole_gpus_and_never_shares_one() -> None:
    allocator = GpuAllocator(Gpu(g["index"], g["uuid"], g["name"], g["memory_bytes"])
                             for g in INVENTORY)
    first = allocator.acquire("GPU-H100", 1, "r1")
    second = allocator.acquire("GPU-H100", 1, "r2")
    assert {g.uuid for g in first} | {g.uuid for g in second} == {"GPU-h100-aaaa",
                                                                  "GPU-h100-bbbb"}
    assert allocator.capacity("GPU-H100", 1) == "no capacity for GPU-H100: 2 of 2 in use, 1 needed"
    with pytest.raises(NoCapacityError):
        allocator.acquire("GPU-H100", 1, "r3")
    allocator.release("r1")
    assert [g.uuid for g in allocator.acquire("GPU-H100", 1, "r3")] == [first[0].uuid]
    assert "this host has no GPU-B200" in allocator.capacity("GPU-B200", 1)
    assert allocator.capacity("GPU-A100", 2) == (
        "no capacity for GPU-A100: 0 of 1 in use, 2 needed")


@pytest.fixture
def gpu_server(tmp_path: Path) -> Iterator[ServerProcess]:
    inventory = tmp_path / "gpus.json"
    inventory.write_text(json.dumps(INVENTORY))
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                         extra=["--gpu-inventory", str(inventory)]).start()
    yield proc
    stop_cleanly(proc)


def deploy(server: ServerProcess, tmp_path: Path, name: str, machine_type: object,
           num_gpus: int = 1, share: int = 1) -> str:
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(APP.format(name=name, machine_type=machine_type, num_gpus=num_gpus,
                               share=share))
    return server.deploy(f"{path}::OnGpu")


def test_runners_get_their_own_gpus_and_a_request_waits_for_a_free_one(
    gpu_server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = deploy(gpu_server, tmp_path, "on-h100", "GPU-H100")
    gates = [make_gate(tmp_path / f"gate{n}") for n in range(2)]
    with SyncClient(gpu_server.address) as client, \
            ControlClient(gpu_server.address) as control, ThreadPoolExecutor(3) as pool:
        held = [pool.submit(client.subscribe, endpoint, {"gate": str(g)}) for g in gates]
        wait_for(lambda: len([r for r in control.list_runners("on-h100")
                              if r.in_flight_request_ids]) == 2, timeout=60,
                 what="two runners busy")
        third = client.submit(endpoint, {}).request_id  # both H100s are held
        assert "no capacity for GPU-H100: 2 of 2 in use" in waiting_reason(client, third)
        runners = control.list_runners("on-h100")
        assert sorted(g for r in runners for g in r.gpus) == ["GPU-h100-aaaa", "GPU-h100-bbbb"]
        assert all(len(r.gpus) == 1 and r.machine_type == "GPU-H100" for r in runners)
        for gate in gates:
            release(gate)
        outputs = [f.result(timeout=60) for f in held]
        assert sorted(o["visible"] for o in outputs) == ["GPU-h100-aaaa", "GPU-h100-bbbb"]
        assert client.wait(third, timeout=60).output["visible"].startswith("GPU-h100-")
        # A runner that ends gives its GPU back: after a kill, a new runner gets it.
        victim = runners[0]
        gpu_server.cli("runners", "kill", victim.runner_id)
        wait_for(lambda: victim.runner_id not in {r.runner_id
                                                  for r in control.list_runners("on-h100")},
                 what="the killed runner gone")
        two = [pool.submit(client.subscribe, endpoint, {"gate": str(g)}) for g in gates]
        wait_for(lambda: len([r for r in control.list_runners("on-h100")
                              if r.in_flight_request_ids]) == 2, timeout=60,
                 what="two runners busy again")
        for gate in gates:
            release(gate)
        assert sorted(f.result(timeout=60)["visible"] for f in two) == [
            "GPU-h100-aaaa", "GPU-h100-bbbb"]


def test_num_gpus_fallbacks_and_cpu_runners_see_no_gpu(
    gpu_server: ServerProcess, tmp_path: Path
) -> None:
    pair = deploy(gpu_server, tmp_path, "pair", "GPU-H100", num_gpus=2)
    fallback = deploy(gpu_server, tmp_path, "fallback", ["GPU-A100", "S"], num_gpus=2)
    cpu = deploy(gpu_server, tmp_path, "cpu", "S")
    with SyncClient(gpu_server.address) as client:
        assert client.run(pair, {})["visible"] == "GPU-h100-aaaa,GPU-h100-bbbb"
        assert client.run(fallback, {})["visible"] == ""  # one A100 only: it runs on S
        assert client.run(cpu, {})["visible"] == ""
        blocked = deploy(gpu_server, tmp_path, "blocked", "GPU-B200")
        request_id = client.submit(blocked, {}).request_id
        assert "no capacity for GPU-B200: this host has no GPU-B200" in waiting_reason(
            client, request_id)
        client.cancel(request_id)


def test_runners_per_gpu_lets_an_apps_runners_share_one_gpu_and_no_other_app(
    gpu_server: ServerProcess, tmp_path: Path
) -> None:
    shared = deploy(gpu_server, tmp_path, "shared", "GPU-A100", share=2)
    gates = [make_gate(tmp_path / f"gate{n}") for n in range(3)]
    with SyncClient(gpu_server.address) as client, \
            ControlClient(gpu_server.address) as control, ThreadPoolExecutor(3) as pool:
        held = [pool.submit(client.subscribe, shared, {"gate": str(g)}) for g in gates[:2]]
        wait_for(lambda: len([r for r in control.list_runners("shared")
                              if r.in_flight_request_ids]) == 2, timeout=60,
                 what="two runners busy")
        runners = control.list_runners("shared")
        assert [list(r.gpus) for r in runners] == [["GPU-a100-cccc"], ["GPU-a100-cccc"]]
        # A third runner would make three on the GPU: its request waits, saying why.
        third = client.submit(shared, {"gate": str(gates[2])}).request_id
        assert "shares a GPU among 2 runners" in waiting_reason(client, third)
        # Another app never joins a shared GPU, even one that shares its own.
        other = deploy(gpu_server, tmp_path, "other", "GPU-A100", share=4)
        blocked = client.submit(other, {}).request_id
        assert "no capacity for GPU-A100: 1 of 1 in use" in waiting_reason(client, blocked)
        for gate in gates:
            release(gate)
        assert [f.result(timeout=60)["visible"] for f in held] == ["GPU-a100-cccc"] * 2
        assert client.wait(third, timeout=60).output["visible"] == "GPU-a100-cccc"
        client.cancel(blocked)


def test_runners_per_gpu_with_several_gpus_per_runner_is_refused_at_deploy(
    gpu_server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "both.py"
    path.write_text(APP.format(name="both", machine_type="GPU-H100", num_gpus=2, share=2))
    result = gpu_server.cli("deploy", f"{path}::OnGpu", check=False)
    assert result.returncode != 0
    assert "runners_per_gpu (2) shares one GPU among runners, so num_gpus must be 1" in (
        result.stdout + result.stderr)
    assert gpu_server.proc is not None and gpu_server.proc.poll() is None  # still serving
