"""pytest fixtures for app authors' integration tests: a real local falrt server.

Enable them in the `conftest.py` at the root of your tests (pytest reads plugin options
only from there):

    pytest_plugins = ["falrt.pytest_plugin"]

- `falrt_server`: one `falrt server` for the whole test session (`falrt.testing_server.
  LocalServer`: `.deploy("app.py::App")`, `.client()`, `.cli(...)`, `.log()`), with its
  own data directory and credentials under pytest's temporary directory; stopped, with its
  runners, when the session ends. `--falrt-server-arg=ARG` (repeatable) passes more flags to
  it, e.g. `--falrt-server-arg=--http-listen=127.0.0.1:0`.
- `falrt_client`: a `falrt.client.SyncClient` of that server, with its admin key, closed
  after each test.

For unit tests of an app without a server, use `falrt.testing.AppClient` (docs/testing-apps.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from falrt.client.sync import SyncClient
from falrt.testing_server import LocalServer, local_server

__all__ = ["falrt_client", "falrt_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("falrt").addoption(
        "--falrt-server-arg", action="append", default=[], metavar="ARG",
        help="one more flag for the `falrt server` of the falrt_server fixture (repeatable)")


@pytest.fixture(scope="session")
def falrt_server(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[LocalServer]:
    """A real `falrt server` shared by the session's tests."""
    extra = tuple(pytestconfig.getoption("falrt_server_arg"))
    with local_server(tmp_path_factory.mktemp("falrt-server"), extra_args=extra) as server:
        yield server


@pytest.fixture
def falrt_client(falrt_server: LocalServer) -> Iterator[SyncClient]:
    """A client of `falrt_server` with its admin key."""
    with falrt_server.client() as client:
        yield client
