"""Payloads by reference with a PostgreSQL store (docs/files.md, "Payloads by reference"):
the request row keeps the reference, and a result by reference is still fetched after the
server restarted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt.client import SyncClient
from tests.apps.bulky_payloads import made
from tests.harness import ServerProcess, stop_cleanly
from tests.postgres import fresh_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
MiB = 1024 * 1024


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as fresh:
        yield fresh


def test_inputs_and_outputs_by_reference_are_kept_in_postgresql(tmp_path: Path, dsn: str) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", store=dsn).start()
    try:
        endpoint = server.deploy("tests/apps/bulky_payloads.py::BulkyPayloads")
        text = made(3 * MiB, "pg")
        with SyncClient(server.address) as client:
            digest = client.submit(endpoint, {"text": text}).get()
            assert digest == {"size": len(text),
                              "sha256": hashlib.sha256(text.encode()).hexdigest()}
            made_id = client.submit(endpoint, {"size": 2 * MiB}, path="/make").request_id
            assert client.wait(made_id, timeout=120).output == {"text": made(2 * MiB, "x")}
        server.stop()
        server.start()
        with SyncClient(server.address) as client:
            assert client.result(made_id) == {"text": made(2 * MiB, "x")}
    finally:
        stop_cleanly(server)
