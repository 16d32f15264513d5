"""The PyTorch example end to end: its requirements (torch) are installed into the app's
environment at deploy, the model is built in setup(), and calls return its logits."""

from __future__ import annotations

import json

import pytest

from falrt import errors
from falrt.client import SyncClient
from tests.harness import ServerProcess

# Installing torch into the app's environment takes most of a minute, more on a
# busy machine (make test runs files in parallel).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_the_mlp_example_serves_its_model(server: ServerProcess) -> None:
    endpoint = server.deploy("examples/mlp.py::MLP")
    features = [((i * 37) % 101) / 101 for i in range(256)]
    with SyncClient(server.address) as client:
        queued = client.subscribe(endpoint, {"features": features})
        direct = client.run(endpoint, {"features": features})
        assert queued == direct  # one model, deterministic weights
        assert len(queued["logits"]) == 10
        assert queued["label"] == max(range(10), key=lambda i: queued["logits"][i])
        assert queued["device"] == "cpu"
        with pytest.raises(errors.ValidationFailedError) as short:
            client.run(endpoint, {"features": [1.0]})
        assert [loc for loc, _ in short.value.field_errors] == ["$.features"]
    cli = server.cli("call", endpoint, "--sync", "--data", json.dumps({"features": features}))
    assert json.loads(cli.stdout)["label"] == queued["label"]
