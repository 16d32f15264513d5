from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess


@pytest.fixture(scope="session", autouse=True)
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Servers write their admin keys here and clients read them (not ~/.config)."""
    path = tmp_path_factory.mktemp("credentials") / "credentials.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FALRT_CREDENTIALS", str(path))
        patch.delenv("FALRT_KEY", raising=False)
        yield path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server shared by the tests of one module."""
    root = tmp_path_factory.mktemp("server")
    proc = ServerProcess(root / "data", root / "server.log").start()
    yield proc
    code = proc.stop()
    assert code == 0, f"server exited {code}; log:\n{proc.log()[-3000:]}"


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server of the test's own."""
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    yield proc
    proc.stop()
