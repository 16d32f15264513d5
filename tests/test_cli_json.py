"""`--output json` of the mutating commands, and the documented shapes (docs/cli-json.md), on
a real server through the CLI as scripts call it."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from falrt.client import SyncClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e


def as_json(server: ServerProcess, *args: str) -> Any:
    """The command's stdout, parsed: it is exactly one JSON document."""
    return json.loads(server.cli(*args, "--output", "json").stdout)


def _runners(server: ServerProcess, app: str) -> list[dict[str, Any]]:
    return as_json(server, "runners", "list", "--app", app)  # type: ignore[no-any-return]


def test_environments_secrets_and_keys_answer_in_json(server: ServerProcess) -> None:
    created = as_json(server, "envs", "create", "jsonenv", "--description", "for scripts")
    assert (created["name"], created["description"]) == ("jsonenv", "for scripts")
    assert isinstance(created["created_at"], str) and created["created_at"].endswith("Z")
    assert as_json(server, "secrets", "set", "A=1", "B=2", "--env", "jsonenv") == {
        "environment": "jsonenv", "names": ["A", "B"]}
    assert as_json(server, "secrets", "unset", "A", "--env", "jsonenv") == {
        "environment": "jsonenv", "name": "A", "unset": True}
    assert as_json(server, "envs", "delete", "jsonenv", "--yes") == {
        "name": "jsonenv", "apps": [], "secrets": 1}
    key = as_json(server, "keys", "create", "--scope", "api", "--description", "ci")
    assert {"key_id", "key", "scope", "owner", "description", "created_at", "revoked_at"} \
        <= key.keys()
    assert (key["scope"], key["revoked_at"], key["key"].split(":")[0]) == (
        "API", None, key["key_id"])
    assert as_json(server, "keys", "revoke", key["key_id"]) == {
        "key_id": key["key_id"], "revoked": True}


def test_apps_and_runners_list_numbers_and_flag_words(server: ServerProcess) -> None:
    server.cli("deploy", "examples/hello.py::Hello", "--app-name", "jsonlist", "--wait")
    (app,) = [a for a in as_json(server, "apps", "list") if a["name"] == "jsonlist"]
    assert type(app["queue_size"]) is int and type(app["active_runners"]) is int
    assert app["active_runners"] >= 1
    assert app["endpoints"][0]["kind"] == "unary"
    assert isinstance(app["endpoints"][0]["input_schema"], dict)
    (runner,) = _runners(server, "jsonlist")
    assert runner["state"] == "idle" and type(runner["served"]) is int
    assert runner["transitions"][0]["state"] == "pending"
    assert runner["node"] == socket.gethostname()  # (the process backend's runners: this host)
    assert as_json(server, "apps", "runners", "jsonlist")[0]["state"] == "idle"


def test_runners_stop_and_kill_and_rollout_answer_in_json(server: ServerProcess) -> None:
    server.cli("deploy", "examples/hello.py::Hello", "--app-name", "jsonrun", "--wait")
    (runner,) = _runners(server, "jsonrun")
    stopped = as_json(server, "runners", "stop", runner["runner_id"], "--replace")
    assert stopped["runner"]["runner_id"] == runner["runner_id"]
    assert isinstance(stopped["replacement_runner_id"], str)
    killed = as_json(server, "runners", "kill", stopped["replacement_runner_id"])
    assert killed["runner"]["runner_id"] == stopped["replacement_runner_id"]
    assert isinstance(killed["runner"]["state"], str) and killed["runner"]["state"].islower()
    rolled = as_json(server, "apps", "rollout", "jsonrun", "--force")
    assert rolled.keys() == {"app_name", "force", "runner_ids", "replacement_runner_ids"}
    assert (rolled["app_name"], rolled["force"]) == ("jsonrun", True)
    scaled = as_json(server, "apps", "scale", "jsonrun", "--max-concurrency", "3")
    assert scaled["scale_overrides"]["max_concurrency"] == 3
    assert scaled["scale_overrides"]["keep_alive_s"] is None


def test_rollback_delete_rev_delete_and_cancel_answer_in_json(server: ServerProcess) -> None:
    first = as_json(server, "deploy", "examples/hello.py::Hello", "--app-name", "jsonback")
    second = as_json(server, "deploy", "examples/hello.py::Hello", "--app-name", "jsonback",
                     "--force")
    revisions = as_json(server, "apps", "revisions", "jsonback")
    assert [(r["revision_id"], r["live"]) for r in revisions] == [
        (second["revision_id"], True), (first["revision_id"], False)]
    assert all(isinstance(r["created_at"], str) for r in revisions)
    back = as_json(server, "apps", "rollback", "jsonback", first["revision_id"])
    assert {"endpoint_id", "app_name", "revision_id"} <= back.keys()
    assert (back["app_name"], back["revision_id"]) == ("jsonback", first["revision_id"])
    assert as_json(server, "apps", "delete-rev", second["revision_id"]) == {
        "revision_id": second["revision_id"], "deleted": True}
    with SyncClient(server.address) as client:
        request_id = client.submit(back["endpoint_id"], {"name": "x"}).request_id
        cancelled = as_json(server, "requests", "cancel", request_id)
        assert cancelled["request_id"] == request_id
        assert cancelled["outcome"] in {"cancellation_requested", "already_completed"}
    assert as_json(server, "apps", "delete", "jsonback") == {"app_name": "jsonback",
                                                              "deleted": True}
    assert "jsonback" not in {a["name"] for a in as_json(server, "apps", "list")}
