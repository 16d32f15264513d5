"""Apps that call other apps: each runner gets an API key of the server's owner
(`FALRT_KEY`) and the address it dials (`FALRT_HOST`), so `falrt.client` works in a handler
with no configuration; the key cannot use the control plane and dies with its runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from falrt import errors
from falrt.client import SyncClient, credentials
from falrt.client.control import ControlClient
from tests.harness import ServerProcess, stop_cleanly, wait_for
from tests.postgres import fresh_database

pytestmark = pytest.mark.e2e


def test_a_handler_calls_a_private_app_and_its_key_dies_with_its_runner(
    server: ServerProcess,
) -> None:
    hello = server.deploy("examples/hello.py::Hello", "--app-name", "hello-for-relay")
    relay = server.deploy("tests/apps/relay.py::Relay")
    with SyncClient(server.address) as client:
        # SyncClient() with no arguments in the handler reaches a private app of the owner.
        answer = client.run(relay, {"endpoint_id": hello, "arguments": {"name": "relay"}})
        assert answer == {"answer": {"greeting": "Hello, relay!"}}
        # The runner's key is API scope: the control plane refuses it.
        denied = client.run(relay, {}, path="/control")
        assert denied["error"] == "PermissionDeniedError", denied
        given = client.run(relay, {}, path="/key")
    key, runner = given["key"], given["runner"]
    key_id, _, secret = key.partition(":")
    assert key_id.startswith("k-") and secret
    assert given["host"] == server.address

    listed = server.cli("keys", "list").stdout + server.cli(
        "keys", "list", "--output", "json").stdout
    assert key_id in listed and secret not in listed
    with ControlClient(server.address) as control:
        info = next(k for k in control.list_keys() if k.key_id == key_id)
        assert info.scope == "API"
        assert info.description.startswith(f"runner {runner} of app relay on server ")
        assert not info.HasField("revoked_at")
        control.stop_runner(runner)

        def revoked() -> bool:
            return any(k.key_id == key_id and k.HasField("revoked_at")
                       for k in control.list_keys())

        wait_for(revoked, timeout=30, what="the runner's key revoked when it ended")
        logs = "\n".join(control.runner_logs(runner))
    # A call with it fails once the server's key cache (auth.CACHE_S) has let it go.
    with SyncClient(server.address, key=key) as stolen:

        def refused() -> bool:
            try:
                stolen.run(hello, {"name": "thief"})
            except errors.UnauthenticatedError:
                return True
            return False

        wait_for(refused, timeout=10, what="the dead runner's key refused")
    assert secret not in server.log() and secret not in logs


def test_the_keys_of_runners_that_died_with_their_server_are_revoked_at_the_next_start(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "first.log").start()
    try:
        relay = first.deploy("tests/apps/relay.py::Relay")
        with SyncClient(first.address) as client:
            key = client.run(relay, {}, path="/key")["key"]
    finally:
        first.kill()  # no chance to revoke: its process runners die with it
    wait_for(lambda: not first.leftovers(), timeout=30, what="the runners gone")
    second = ServerProcess(data_dir, tmp_path / "second.log").start()
    try:
        with SyncClient(second.address, key=key) as stolen, pytest.raises(
                errors.UnauthenticatedError):
            stolen.run(relay, {}, path="/key")
        assert "revoked 1 keys of runners" in second.log()
    finally:
        stop_cleanly(second)


@pytest.mark.postgres
def test_on_a_shared_store_the_keys_of_a_dead_servers_runners_are_revoked_by_another(
    tmp_path: Path,
) -> None:
    """Two servers on one PostgreSQL: the one that takes over a killed server's lease
    revokes the keys of the runners that server started (they died with it)."""
    with fresh_database() as dsn:
        lease = ["--lease", "1"]
        first = ServerProcess(tmp_path / "a", tmp_path / "a.log", store=dsn, extra=lease).start()
        second = ServerProcess(tmp_path / "b", tmp_path / "b.log", store=dsn, extra=lease)
        try:
            second.start()
            relay = first.deploy("tests/apps/relay.py::Relay")
            with SyncClient(first.address) as client:
                key_id = client.run(relay, {}, path="/key")["key"].partition(":")[0]
            admin = credentials.key_for(first.address)  # (the store's one admin key)
            first.kill()  # its lease lapses; its process runners die with it
            with ControlClient(second.address, key=admin) as control:

                def revoked() -> bool:
                    return any(k.key_id == key_id and k.HasField("revoked_at")
                               for k in control.list_keys())

                wait_for(revoked, timeout=30, what="the dead server's runner key revoked")
        finally:
            stop_cleanly(second)
