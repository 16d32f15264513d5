"""Revisions, rolling deploys, rollbacks and rollouts on a real server under traffic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt.client import SyncClient
from falrt.client.control import ControlClient
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

APP = '''
import time

import msgspec
import falrt


class In(msgspec.Struct):
    n: int = 0


class Out(msgspec.Struct):
    version: int
    n: int


class Versioned(falrt.App):
    app_name = "versioned"
    max_concurrency = 2
    max_multiplexing = 4
    keep_alive = 300

    def setup(self) -> None:
        time.sleep(0.5)  # a model load
        if {broken}:
            raise RuntimeError("weights for version {version} are corrupt")

    @falrt.endpoint("/")
    async def run(self, request: In) -> Out:
        return Out(version={version}, n=request.n)
'''


class Traffic:
    """Two callers submitting and waiting without pause until stopped; every outcome kept."""

    def __init__(self, address: str, endpoint: str) -> None:
        self.address, self.endpoint = address, endpoint
        # (submitted, completed, version) per call, on time.monotonic(), as the callers saw them
        self.calls: list[tuple[float, float, int]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call) for _ in range(2)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.versions) >= 5, what="traffic flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _call(self) -> None:
        with SyncClient(self.address) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                submitted = time.monotonic()
                try:
                    done = client.wait(client.submit(self.endpoint, {"n": n}).request_id,
                                       timeout=60)
                except Exception as exc:
                    self.failures.append(repr(exc))
                    continue
                if done.error is not None:
                    self.failures.append(done.error.message)
                else:
                    self.calls.append((submitted, time.monotonic(), done.output["version"]))

    @property
    def versions(self) -> list[int]:
        return [version for _, _, version in self.calls]

    def served(self, version: int) -> bool:
        return bool(self.versions) and self.versions[-1] == version


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    yield proc
    stop_cleanly(proc)


def deploy(server: ServerProcess, tmp_path: Path, version: int, *extra: str,
           broken: bool = False, check: bool = True) -> tuple[int, str, str]:
    """Deploys the app at `version`; (exit status, revision id or "", stderr)."""
    app_file = tmp_path / f"v{version}" / "versioned.py"
    app_file.parent.mkdir(exist_ok=True)
    app_file.write_text(APP.format(version=version, broken=broken))
    result = server.cli("deploy", f"{app_file}::Versioned", "--output", "json", *extra,
                        check=check)
    revision = json.loads(result.stdout)["revision_id"] if result.returncode == 0 else ""
    return result.returncode, revision, result.stderr


def revisions_of(control: ControlClient) -> dict[str, bool]:
    return {r.revision_id: r.live for r in control.list_revisions("versioned")}


def test_a_rolling_deploy_whose_setup_fails_leaves_the_old_revision_serving(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, first, _ = deploy(server, tmp_path, 1)
    with Traffic(server.address, "local/versioned") as traffic:
        code, _, stderr = deploy(server, tmp_path, 2, broken=True, check=False)
        served_during = len(traffic.versions)
    assert code != 0
    assert "weights for version 2 are corrupt" in stderr and f"keeps serving {first}" in stderr
    assert traffic.failures == [] and set(traffic.versions) == {1}
    assert len(traffic.versions) > served_during  # it went on serving after the failure
    with ControlClient(server.address) as control:
        assert control.get_app("versioned").revision_id == first
        assert revisions_of(control) == {first: True}  # the failed revision was not kept


def test_a_good_rolling_deploy_under_traffic_loses_nothing_and_ends_on_new_runners(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, first, _ = deploy(server, tmp_path, 1)
    with Traffic(server.address, "local/versioned") as traffic, \
            ControlClient(server.address) as control:
        old_runners = {r.runner_id for r in control.list_runners("versioned")}
        _, second, _ = deploy(server, tmp_path, 2)
        wait_for(lambda: traffic.served(2), what="version 2 served")
        wait_for(lambda: {r.revision_id for r in control.list_runners("versioned")} == {second},
                 timeout=60, what="only runners of the new revision")
    assert traffic.failures == []
    # Once a caller has seen version 2 the switch is done: every request submitted after that
    # runs on the new revision. (A request dispatched to an old runner just before the switch
    # may still finish after a new runner's first answer: the two callers overlap.)
    switched = min(completed for _, completed, version in traffic.calls if version == 2)
    assert {version for submitted, _, version in traffic.calls if submitted > switched} == {2}
    assert {version for submitted, _, version in traffic.calls if submitted < switched} >= {1}
    with ControlClient(server.address) as control:
        assert not old_runners & {r.runner_id for r in control.list_runners("versioned")}
        assert revisions_of(control) == {first: False, second: True}


def test_rollback_serves_the_earlier_revision_and_revisions_can_be_deleted(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, first, _ = deploy(server, tmp_path, 1, "--annotation", "commit=aaa111")
    _, second, _ = deploy(server, tmp_path, 2, "--strategy", "recreate")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        assert client.run("local/versioned", {})["version"] == 2
        listing = json.loads(
            server.cli("apps", "revisions", "versioned", "--output", "json").stdout)
        assert [(r["revision_id"], r.get("live", False)) for r in listing] == [
            (second, True), (first, False)]
        assert listing[1]["annotations"] == {"commit": "aaa111"}
        # Rolling: the command returns once a runner of the old revision is ready.
        server.cli("apps", "rollback", "versioned", first)
        assert client.run("local/versioned", {})["version"] == 1
        assert revisions_of(control) == {first: True, second: False}

        live = server.cli("apps", "delete-rev", first, check=False)
        assert live.returncode != 0 and "is the live revision" in live.stderr
        server.cli("apps", "delete-rev", second)
        assert revisions_of(control) == {first: True}
        again = server.cli("apps", "rollback", "versioned", second, check=False)
        assert again.returncode != 0 and "has no revision" in again.stderr


def test_deploying_the_same_app_again_changes_nothing_and_says_so(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, first, _ = deploy(server, tmp_path, 1)
    again = server.cli("deploy", f"{tmp_path / 'v1' / 'versioned.py'}::Versioned")
    assert f"unchanged: revision {first} already serves this" in again.stderr
    assert again.stdout.strip() == "local/versioned"
    result = json.loads(server.cli("deploy", f"{tmp_path / 'v1' / 'versioned.py'}::Versioned",
                                   "--output", "json").stdout)
    assert result["unchanged"] is True and result["revision_id"] == first
    listing = json.loads(server.cli("apps", "revisions", "versioned", "--output", "json").stdout)
    assert [r["revision_id"] for r in listing] == [first]
    _, forced, _ = deploy(server, tmp_path, 1, "--force", "--strategy", "recreate")
    assert forced != first


def test_rollout_replaces_every_runner_and_force_kills_them(
    server: ServerProcess, tmp_path: Path
) -> None:
    deploy(server, tmp_path, 1)
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        client.run("local/versioned", {})
        before = {r.runner_id for r in control.list_runners("versioned")}
        reply = control.rollout("versioned")
        assert set(reply.runner_ids) == before and len(reply.replacement_runner_ids) == 1
        wait_for(lambda: {r.runner_id for r in control.list_runners("versioned")}
                 == set(reply.replacement_runner_ids), timeout=60, what="the replacement only")
        assert client.run("local/versioned", {})["version"] == 1

        forced = control.rollout("versioned", force=True)
        assert set(forced.runner_ids) == set(reply.replacement_runner_ids)
        wait_for(lambda: not set(forced.runner_ids)
                 & {r.runner_id for r in control.list_runners("versioned")}, what="killed")
        assert client.run("local/versioned", {})["version"] == 1  # a new runner starts
