"""A real multi-node Ray cluster on this machine, run in a helper process for the ray tests.

`python -m tests.raycluster SPEC` starts Ray's own `ray.cluster_utils.Cluster`: a head with
no CPUs (no runner lands on it) and a Ray Client server, and one worker node per entry of
SPEC, a JSON object of node name -> {"num_cpus": N, "resources": {...}}. Each node is a real
raylet with its own object store (100 MB), started by Ray as `ray start` starts one. (Not
`ray start` itself: `ray stop` kills every Ray process of the machine by name, and the
helper can kill one node's raylet by its pid.) It prints one JSON line,
{"address": GCS address, "client": "ray://HOST:PORT" of Ray Client, "nodes": {name: node
id}}, then obeys lines on stdin:

- `kill NAME`: SIGKILLs that node's raylet (a node lost as a machine is lost: its workers
  and their children go with it); answers `killed NAME`;
- `add NAME JSON`: adds a node like those of SPEC; answers `added NAME NODE_ID`;
- `kill-head`: SIGKILLs the head's GCS server (the cluster's state, without fault
  tolerance); answers `killed head`.

Stdin closing (the test ended, or died) shuts the whole cluster down: every process it
started, by its pid.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from ray.cluster_utils import Cluster

OBJECT_STORE_BYTES = 100_000_000


def _add(cluster: Cluster, spec: dict[str, Any]) -> Any:
    return cluster.add_node(num_cpus=spec.get("num_cpus", 1),
                            resources=spec.get("resources", {}),
                            object_store_memory=OBJECT_STORE_BYTES)


def main() -> None:
    specs: dict[str, dict[str, Any]] = json.loads(sys.argv[1])
    with socket.socket() as probe:  # a free port for Ray Client (Ray takes no port 0 here)
        probe.bind(("127.0.0.1", 0))
        client_port = probe.getsockname()[1]
    cluster: Any = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False,
        "ray_client_server_port": client_port})
    nodes = {name: _add(cluster, spec) for name, spec in specs.items()}
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "client": f"ray://127.0.0.1:{client_port}",
                      "nodes": {name: node.node_id for name, node in nodes.items()}}),
          flush=True)
    try:
        for line in sys.stdin:
            command, _, rest = line.strip().partition(" ")
            if command == "kill":
                nodes[rest].kill_raylet()
                print(f"killed {rest}", flush=True)
            elif command == "kill-head":
                cluster.head_node.kill_gcs_server()
                print("killed head", flush=True)
            elif command == "add":
                name, _, spec = rest.partition(" ")
                nodes[name] = _add(cluster, json.loads(spec))
                print(f"added {name} {nodes[name].node_id}", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
