"""A client written from proto/ alone: stubs generated here, no falrt code imported.

The client runs in a subprocess whose sys.path starts with a folder holding only the
freshly generated stubs, so `falrt.v1` resolves to them and never to the falrt package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_tools import protoc

from falrt.client import credentials
from tests.harness import REPO, ServerProcess

pytestmark = pytest.mark.e2e

CLIENT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc
import falrt
assert falrt.__file__ is None or falrt.__file__.startswith(sys.argv[1]), falrt.__file__
channel = grpc.insecure_channel(sys.argv[2])
stub = queue_pb2_grpc.QueueStub(channel)
key = [("authorization", "Key " + sys.argv[4])]  # how any gRPC client sends an API key
submitted = stub.Submit(queue_pb2.SubmitRequest(
    endpoint_id=sys.argv[3],
    input=common_pb2.Payload(data=json.dumps({"name": "proto"}).encode(),
                             content_type="application/json")), metadata=key)
statuses, logs = [], []
request = queue_pb2.WatchRequest(request_id=submitted.request_id, with_logs=True)
for update in stub.Watch(request, metadata=key):
    statuses.append(common_pb2.RequestStatus.Name(update.state.status))
    logs.extend(line.message for line in update.state.logs)  # each update brings new lines
    last = update.state
print(json.dumps({"statuses": statuses, "output": json.loads(last.output.data), "logs": logs}))
'''


def _generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    protos = [str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto")]
    code = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *protos])
    assert code == 0
    for package in (out / "falrt", out / "falrt" / "v1"):
        (package / "__init__.py").write_text("")


def test_a_client_from_the_proto_alone_can_submit_and_watch(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = server.deploy("examples/hello.py::Hello")
    _generate(tmp_path)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    key = credentials.key_for(server.address)
    assert key is not None
    out = subprocess.run([sys.executable, str(script), str(tmp_path), server.address, endpoint,
                          key],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["output"] == {"greeting": "Hello, proto!"}
    assert result["statuses"][-1] == "REQUEST_STATUS_COMPLETED"
    assert any(m.startswith("greeting proto") for m in result["logs"])
