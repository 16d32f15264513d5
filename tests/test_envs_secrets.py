"""Environments keep apps and secrets apart; secrets reach runners and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt import errors
from falrt.client import SyncClient
from falrt.client.control import ControlClient
from tests.harness import ServerProcess, stop_cleanly
from tests.test_failures import waiting_reason

pytestmark = pytest.mark.e2e

APP = '''
import os

import msgspec
import falrt


class In(msgspec.Struct):
    names: list[str] = []


class Out(msgspec.Struct):
    values: dict[str, str]
    app: str
    env: str


class Showenv(falrt.App):
    app_name = "showenv"
    keep_alive = 300
    {extra}

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        return Out(values={{n: os.environ.get(n, "") for n in request.names}},
                   app=os.environ["FALRT_APP_NAME"], env=os.environ["FALRT_ENV"])
'''
MAIN_VALUE = "hello-from-main-0b5d2e"
STAGING_VALUE = "s3cr3t-staging-value-7c41a9"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("envs")
    proc = ServerProcess(root / "data", root / "server.log").start()
    yield proc
    stop_cleanly(proc)


def app_file(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "showenv.py"
    path.write_text(APP.format(extra=extra))
    return f"{path}::Showenv"


def test_environments_keep_apps_and_secrets_apart(server: ServerProcess, tmp_path: Path) -> None:
    server.cli("envs", "create", "staging", "--description", "pre-production")
    server.cli("secrets", "set", f"GREETING={MAIN_VALUE}")
    server.cli("secrets", "set", "--env", "staging", f"GREETING={STAGING_VALUE}", "ONLY_HERE=1")
    target = app_file(tmp_path)
    assert server.deploy(target) == "local/showenv"
    assert server.deploy(target, "--env", "staging") == "local/showenv--staging"
    names = {"names": ["GREETING", "ONLY_HERE"]}
    with SyncClient(server.address) as client:
        main = client.run("local/showenv", names)
        staging = client.run("local/showenv--staging", names)
    assert main == {"values": {"GREETING": MAIN_VALUE, "ONLY_HERE": ""}, "app": "showenv",
                    "env": "main"}
    assert staging == {"values": {"GREETING": STAGING_VALUE, "ONLY_HERE": "1"},
                       "app": "showenv", "env": "staging"}
    called = server.cli("call", "local/showenv", "--env", "staging", "--sync", "--data",
                        json.dumps(names))
    assert json.loads(called.stdout)["env"] == "staging"

    listed = json.loads(server.cli("apps", "list", "--output", "json").stdout)
    assert [a["name"] for a in listed] == ["showenv"]
    staged = json.loads(server.cli("apps", "list", "--env", "staging", "--output", "json").stdout)
    assert [(a["name"], a["endpoint_id"]) for a in staged] == [
        ("showenv--staging", "local/showenv--staging")]
    secrets = json.loads(
        server.cli("secrets", "list", "--env", "staging", "--output", "json").stdout)
    assert [s["name"] for s in secrets] == ["GREETING", "ONLY_HERE"]

    deleted = server.cli("envs", "delete", "staging", "--yes")
    assert "1 app(s), 2 secret(s)" in deleted.stderr
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        with pytest.raises(errors.NotFoundError):
            client.run("local/showenv--staging", names)
        assert client.run("local/showenv", names)["values"]["GREETING"] == MAIN_VALUE
        assert [e.name for e in control.list_environments()] == ["main"]
        with pytest.raises(errors.NotFoundError, match="falrt envs create staging"):
            control.list_secrets("staging")
    main_delete = server.cli("envs", "delete", "main", "--yes", check=False)
    assert main_delete.returncode != 0 and "cannot be deleted" in main_delete.stderr
    nowhere = server.cli("deploy", target, "--env", "nowhere", check=False)
    assert nowhere.returncode != 0 and "falrt envs create nowhere" in nowhere.stderr


def test_an_app_gets_only_the_secrets_it_lists_and_waits_for_missing_ones(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.cli("envs", "create", "qa")
    server.cli("secrets", "set", "--env", "qa", "WANTED=yes", "OTHER=no")
    target = app_file(tmp_path, 'secrets = ["WANTED", "MISSING"]')
    endpoint = server.deploy(target, "--env", "qa")
    with SyncClient(server.address) as client:
        request_id = client.submit(endpoint, {"names": ["WANTED", "OTHER"]}).request_id
        reason = waiting_reason(client, request_id)
        assert "MISSING" in reason and "not set in environment qa" in reason
        server.cli("secrets", "set", "--env", "qa", "MISSING=now")
        server.cli("apps", "rollout", "showenv", "--env", "qa")  # start again, now
        done = client.wait(request_id, timeout=120)
    assert done.output["values"] == {"WANTED": "yes", "OTHER": ""}


def test_secret_values_appear_in_no_log_listing_error_or_stored_byte(
    server: ServerProcess, tmp_path: Path
) -> None:
    value = "p4ss-w0rd-never-shown-93e1f0"
    server.cli("envs", "create", "vault")
    outputs = [server.cli("secrets", "set", "--env", "vault", f"TOKEN={value}")]
    endpoint = server.deploy(app_file(tmp_path), "--env", "vault")
    with SyncClient(server.address) as client:
        assert client.run(endpoint, {"names": ["TOKEN"]})["values"] == {"TOKEN": value}
    outputs += [
        server.cli("secrets", "list", "--env", "vault"),
        server.cli("secrets", "list", "--env", "vault", "--output", "json"),
        server.cli("apps", "get", "showenv", "--env", "vault", "--output", "json"),
        server.cli("runners", "list", "--output", "json"),
        server.cli("secrets", "set", "--env", "vault", f"1BAD={value}", check=False),
        server.cli("secrets", "set", "--env", "vault", f"{value}", check=False),
    ]
    assert outputs[-1].returncode != 0 and outputs[-2].returncode != 0
    for result in outputs:
        assert value not in result.stdout and value not in result.stderr
    runner_id = json.loads(outputs[4].stdout)[0]["runner_id"]
    outputs.append(server.cli("runners", "logs", runner_id))
    assert value not in outputs[-1].stdout
    assert value not in server.log()
    data_dir = server.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert value.encode() not in path.read_bytes(), path
    assert (data_dir / "secrets.key").stat().st_mode & 0o777 == 0o600


def test_a_secret_value_comes_from_a_file_or_standard_input_not_the_command_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.cli("envs", "create", "files")
    (tmp_path / "token").write_text("from-a-file-5d1\n")
    quiet = [
        server.cli("secrets", "set", "--env", "files", "TOKEN", "--from-file",
                   str(tmp_path / "token")),
        server.cli("secrets", "set", "--env", "files", "PIPED", "--from-file", "-",
                   input="from-stdin-88\n"),
        server.cli("secrets", "set", "--env", "files", "STDIN", input="no-flag-needed-2\n"),
    ]
    inline = server.cli("secrets", "set", "--env", "files", "INLINE=on-the-line")
    assert all("warning" not in r.stderr for r in quiet)
    assert "puts the value in the process list" in inline.stderr
    two_alone = server.cli("secrets", "set", "--env", "files", "A", "B", check=False,
                           input="x")
    assert two_alone.returncode != 0 and "exactly one NAME alone" in two_alone.stderr
    endpoint = server.deploy(app_file(tmp_path), "--env", "files")
    names = ["TOKEN", "PIPED", "STDIN", "INLINE"]
    with SyncClient(server.address) as client:
        assert client.run(endpoint, {"names": names})["values"] == {
            "TOKEN": "from-a-file-5d1", "PIPED": "from-stdin-88", "STDIN": "no-flag-needed-2",
            "INLINE": "on-the-line"}
