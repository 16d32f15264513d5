"""The gRPC calls bench/overhead.py --h2load and bench/breakdown.py drive with h2load.

`workload_targets` starts a bare grpc.aio server of bench/baselines.py and deploys the
matching falrt app to a running falrt server, and returns three h2load targets, each
checked once with a real client: `grpc_echo` (the bare server, one hop: the floor),
`falrt_direct` (`Queue.Run`) and `falrt_subscribe` (`Queue.Subscribe`: the durable queue
path, submit and result in one call). Two workloads (`WORKLOADS`): `echo`, examples/noop.py
next to the bare echo, and `mlp`, examples/mlp.py next to the bare server running the same
model (its answers must equal the bare server's: same weights, same input).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from baselines import ECHO_METHOD
from h2drive import GRPC_HEADERS, Target, grpc_frame, listening_pid, runner_pids
from loadgen import CALL_TIMEOUT_S, CHANNEL_OPTIONS, CallFailed, payload
from servers import LISTENING, baseline, deploy, first_success, process

from falrt.client.credentials import metadata_for
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

NOOP_BODY = b'{"value": 1}'
MLP_BODY = json.dumps({"features": [((i * 37) % 101) / 101 for i in range(256)]}).encode()


@dataclass(frozen=True)
class Workload:
    baseline: str  # bench/baselines.py's server
    app: str  # the falrt app doing the same work
    body: bytes  # the request's JSON


WORKLOADS = {
    "echo": Workload("grpc-echo", "examples/noop.py::Noop", NOOP_BODY),
    "mlp": Workload("grpc-mlp", "examples/mlp.py::MLP", MLP_BODY),
}


async def workload_targets(
    stack: contextlib.AsyncExitStack, log_dir: Path, address: str, work: Workload
) -> dict[str, Target]:
    """The three targets of `work` (see the module docstring); what they start ends with
    `stack`."""
    ready = await stack.enter_async_context(
        process(baseline(work.baseline), LISTENING, log_dir / f"{work.baseline}.log"))
    bare_port = int(ready.group(1))
    bare_pid = listening_pid(bare_port)
    bare = await stack.enter_async_context(grpc.aio.insecure_channel(
        f"127.0.0.1:{bare_port}", options=CHANNEL_OPTIONS))
    expected = json.loads(await bare.unary_unary(ECHO_METHOD)(work.body, timeout=CALL_TIMEOUT_S))
    endpoint_id = await deploy(address, work.app)
    channel = await stack.enter_async_context(
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
    key = metadata_for(address)
    server_pid = listening_pid(int(address.rpartition(":")[2]))
    stub = queue_pb2_grpc.QueueStub(channel)
    run = queue_pb2.RunRequest(endpoint_id=endpoint_id, path="/", input=payload(work.body))
    submit = queue_pb2.SubmitRequest(endpoint_id=endpoint_id, path="/", input=payload(work.body))
    subscribe = queue_pb2.SubscribeRequest(submit=submit)

    async def bare_check() -> int:
        out = await bare.unary_unary(ECHO_METHOD)(work.body, timeout=CALL_TIMEOUT_S)
        _same(json.loads(out), expected, "the bare server")
        return len(grpc_frame(out))

    async def direct_check() -> int:
        answer = await stub.Run(run, timeout=CALL_TIMEOUT_S, metadata=key)
        _same(json.loads(answer.output.data), expected, "falrt (Run)")
        return len(grpc_frame(answer.SerializeToString()))

    async def subscribe_check() -> int:
        async for update in stub.Subscribe(subscribe, timeout=CALL_TIMEOUT_S, metadata=key):
            if update.state.status == common_pb2.REQUEST_STATUS_COMPLETED:
                if update.state.HasField("error"):
                    raise CallFailed(update.state.error.message)
                _same(json.loads(update.state.output.data), expected, "falrt (Subscribe)")
                return len(grpc_frame(update.SerializeToString()))
        raise CallFailed("Subscribe ended before COMPLETED")

    await first_success(direct_check, endpoint_id)  # the first call starts the runner
    falrt_headers = (*GRPC_HEADERS, *(f"{name}: {value}" for name, value in key))
    base = f"http://{address}/falrt.v1.Queue"
    targets = [
        Target("grpc_echo", f"http://127.0.0.1:{bare_port}{ECHO_METHOD}",
               grpc_frame(work.body), GRPC_HEADERS, lambda: {"server": [bare_pid]},
               bare_check),
        Target("falrt_direct", f"{base}/Run", grpc_frame(run.SerializeToString()),
               falrt_headers, lambda: _falrt_pids(server_pid), direct_check),
        Target("falrt_subscribe", f"{base}/Subscribe", grpc_frame(subscribe.SerializeToString()),
               falrt_headers, lambda: _falrt_pids(server_pid), subscribe_check),
    ]
    return {target.name: await target.checked() for target in targets}


def _falrt_pids(server_pid: int) -> dict[str, list[int]]:
    return {"server": [server_pid], "runner": runner_pids(server_pid)}


def _same(got: Any, expected: Any, who: str) -> None:
    """`got` equals `expected` (JSON), floats within 1e-5 relative (the same model in
    another process)."""
    if not _close(got, expected):
        raise CallFailed(f"{who} answered {json.dumps(got)[:200]}, not "
                         f"{json.dumps(expected)[:200]}")


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(
            a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)
