"""A fal app deploys unchanged but for its import, and serves (docs/porting-from-fal.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from falrt.client import SyncClient
from falrt.client.control import ControlClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

APP = "tests/apps/ported/ported.py::Ported"


def test_a_fal_app_with_app_files_fal_retry_config_and_realtime_deploys_and_serves(
    server: ServerProcess,
) -> None:
    endpoint_id = server.deploy(APP)
    with SyncClient(server.address) as client:
        # setup() read config.json and prompts/ by relative paths (app_files); the ignored
        # draft was not bundled.
        reply = client.run(endpoint_id, {"prompt": "world"})
        assert reply == {"result": "Hello, world! (drafts: none)"}
        replies = list(client.realtime(endpoint_id, [{"prompt": "a"}, {"prompt": "b"}],
                                       path="/realtime"))
        assert replies == [{"result": "A!"}, {"result": "B!"}]
    with ControlClient(server.address) as control:
        settings = control.get_app("ported").settings
    assert dict(settings.retry_config) == {"timeout": 0, "server_error": 2}
    assert settings.keep_alive_s == 300


def test_deploying_a_fal_option_falrt_lacks_warns_and_still_deploys(
    server: ServerProcess, tmp_path: Path,
) -> None:
    app = tmp_path / "regional.py"
    app.write_text(
        "import msgspec\n\nimport falrt as fal\n\n\n"
        "class Echo(msgspec.Struct):\n    text: str\n\n\n"
        "class Regional(fal.App):\n    regions = ['us-east']\n\n"
        "    @fal.endpoint('/')\n    def echo(self, input: Echo) -> Echo:\n        return input\n")
    result = server.cli("deploy", f"{app}::Regional")
    assert "FalOptionWarning: Regional: fal option regions is not implemented" in result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith("/regional")


NESTED_APP = """
import json
from pathlib import Path

import msgspec

import falrt as fal
import helpers  # beside the app file


class Echo(msgspec.Struct):
    text: str


class Nested(fal.App):
    app_files = ["configs"]
    app_files_context_dir = ".."
    app_files_ignore = [r"\\.draft$"]

    def setup(self) -> None:
        # As on fal, the working directory is the app file's folder under the context dir.
        self.config = json.loads(Path("../configs/model.json").read_text())
        self.found = sorted(p.name for p in (Path(__file__).parent.parent / "configs").iterdir())

    @fal.endpoint("/")
    def echo(self, input: Echo) -> Echo:
        return Echo(text=f"{input.text}{self.config['suffix']}{helpers.MARK} {self.found}")
"""


def test_an_app_files_context_dir_above_the_app_file_serves_files_from_there(
    server: ServerProcess, tmp_path: Path,
) -> None:
    configs, apps = tmp_path / "configs", tmp_path / "apps"
    configs.mkdir()
    apps.mkdir()
    (configs / "model.json").write_text('{"suffix": "!"}')
    (configs / "old.draft").write_text("ignored")
    (apps / "helpers.py").write_text("MARK = '?'\n")
    (apps / "nested.py").write_text(NESTED_APP)
    endpoint_id = server.deploy(f"{apps / 'nested.py'}::Nested")
    with SyncClient(server.address) as client:
        assert client.run(endpoint_id, {"text": "hi"}) == {"text": "hi!? ['model.json']"}
