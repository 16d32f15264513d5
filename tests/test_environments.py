"""Runner environments: requirements go into a virtual environment cached by their hash;
an app without requirements runs on the server's interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest

from falrt.client import SyncClient
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

APP = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    rows: list[list[int]]

class Output(msgspec.Struct):
    table: str
    module_file: str

class Tables(falrt.App):
    app_name = "tables"
    requirements = ["tabulate==0.9.0"]

    @falrt.endpoint("/")
    def render(self, request: Input) -> Output:
        import tabulate  # only the app's environment has it
        return Output(table=tabulate.tabulate(request.rows, tablefmt="plain"),
                      module_file=tabulate.__file__)
'''


def test_requirements_install_into_a_cached_environment(
    fresh_server: ServerProcess, tmp_path: Path
) -> None:
    app_file = tmp_path / "app" / "tables.py"
    app_file.parent.mkdir()
    app_file.write_text(APP)
    first = fresh_server.cli("deploy", f"{app_file}::Tables")
    assert "tabulate" in first.stderr  # the build log reached the deploying user
    venvs = fresh_server.data_dir / "venvs"
    (env,) = [p for p in venvs.iterdir() if p.is_dir()]
    ready = (env / ".ready").stat().st_mtime_ns
    with SyncClient(fresh_server.address) as client:
        out = client.subscribe("local/tables", {"rows": [[1, 2], [3, 4]]})
    assert out["table"].split() == ["1", "2", "3", "4"]
    assert Path(out["module_file"]).is_relative_to(env)

    app_file.write_text(APP.replace('tablefmt="plain"', 'tablefmt="simple"'))
    second = fresh_server.cli("deploy", f"{app_file}::Tables")
    assert "cached" in second.stderr
    assert [p for p in venvs.iterdir() if p.is_dir()] == [env]
    assert (env / ".ready").stat().st_mtime_ns == ready  # not rebuilt for a code change


def test_an_app_without_requirements_creates_no_environment(
    fresh_server: ServerProcess,
) -> None:
    fresh_server.deploy("examples/hello.py::Hello")
    with SyncClient(fresh_server.address) as client:
        assert client.run("local/hello", {"name": "env"}) == {"greeting": "Hello, env!"}
    venvs = fresh_server.data_dir / "venvs"
    assert not venvs.exists() or not any(venvs.iterdir())
