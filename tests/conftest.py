"""Fixtures shared by the test modules, and the rules every test is collected under.

Each test is either `unit` (fast; no server, runner or external service: `make test-fast`) or
`e2e` (real servers, runners, PostgreSQL or Docker), never both and never neither; the
markers are registered in pyproject.toml.

`make test` runs the tests in two parts. First all but the `bench` and `docker` ones, on
pytest-xdist workers with `--dist loadfile`: a test file runs on one worker, start to end,
so a module-scoped server starts once. That is safe because each test has its own server
(port 0, own data directory), its own PostgreSQL database (tests/postgres.py), its own
temporary directory, and each worker its own credentials file (below). Then, on their own,
one after another:
- `bench`: benchmarks whose results are held to timing targets (a cold start under 1.5 s)
  that other tests' load on the same cores would distort;
- `docker`: tests that share the Docker engine and its registry (one removes the `six`
  environment image that others run, one asserts that a redeploy added no image to the
  engine, and the base image is built once per machine);
- `ray`: tests on a multi-node Ray cluster of this machine (tests/raycluster.py): four
  raylets, a GCS and up to 5 runners, heavy for 2 cores beside other tests' servers.
(`--dist loadgroup` with xdist_group markers would keep the Docker tests together on one
worker instead, but pytest-xdist 3.8 ignores the groups under pytest 9.2:
pytest-dev/pytest-xdist#1386.)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.harness import REPO, ServerProcess, stop_cleanly
from tests.s3server import s3_server  # noqa: F401 (moto_server, for the S3 file store's tests)

KINDS = ("unit", "e2e")
# Markers that say a test needs something a unit test may not use.
NOT_UNIT = ("postgres", "docker", "bench", "gpu", "ray")
# Fixtures that start a server: a test that uses one is not a unit test.
SERVER_FIXTURES = ("server", "fresh_server")
# The files that take longest (installing torch into an environment) are handed to
# workers first (`make test` keeps this order: --no-loadscope-reorder), so that they do
# not start last and stretch the run; a name missing here costs time, nothing else.
LONG_FIRST = ("test_embeddings.py", "test_mlp.py", "test_lifecycle.py", "test_cluster.py")
# Where a GPU test can run: an NVIDIA driver is loaded (none in CI).
NVIDIA_DEVICE = Path("/dev/nvidiactl")

# The property suite (tests/test_properties.py) under hypothesis. `ci`, the default: few
# cases per property, so `make test` stays short; no example database (a failure prints the
# case and a `@reproduce_failure` blob). `fuzz` (`make fuzz`, bench/fuzz.py, which sets
# FALRT_FUZZ_EXAMPLES): many cases, and what fails is kept under .hypothesis/ (git-ignored)
# and replayed first by the next fuzz run. No deadline: a case's time is mostly the server's.
settings.register_profile(
    "ci", max_examples=20, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)
settings.register_profile(
    "fuzz", parent=settings.get_profile("ci"),
    max_examples=int(os.environ.get("FALRT_FUZZ_EXAMPLES", "5000")),
    database=DirectoryBasedExampleDatabase(REPO / ".hypothesis" / "examples"),
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misfiled = Counter(f"{item.path.name}: {problem}" for item in items
                       if (problem := _kind_problem(item)))
    if misfiled:
        raise pytest.UsageError(
            "each test must be exactly one of unit or e2e (`pytestmark = pytest.mark.unit` "
            "or `pytest.mark.e2e` after the imports; see tests/conftest.py):\n"
            + "\n".join(f"  {problem} ({count} tests)" for problem, count in misfiled.items())
        )
    for item in items:
        if item.get_closest_marker("gpu") and not NVIDIA_DEVICE.exists():
            item.add_marker(pytest.mark.skip(reason=f"no NVIDIA GPU here ({NVIDIA_DEVICE})"))
    _schedule(items)


def _schedule(items: list[pytest.Item]) -> None:
    """Puts the LONG_FIRST files first, keeping the order of the rest, and sorts the
    instances of each parametrized test by id: xdist needs every worker to collect the same
    order, which parameters taken from a set (hash-seeded) do not give."""
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.nodeid.partition("[")[0], index)
    items.sort(key=lambda item: (item.path.name not in LONG_FIRST,
                                 first_seen[item.nodeid.partition("[")[0]], item.nodeid))


def _kind_problem(item: pytest.Item) -> str:
    """Why `item` breaks the kind rules, or ""."""
    kinds = [kind for kind in KINDS if item.get_closest_marker(kind)]
    if len(kinds) != 1:
        return f"marked {' and '.join(kinds) or 'neither unit nor e2e'}"
    if kinds == ["unit"]:
        needs = [name for name in NOT_UNIT if item.get_closest_marker(name)]
        needs += [f"the {name} fixture" for name in SERVER_FIXTURES
                  if name in getattr(item, "fixturenames", ())]
        if needs:
            return f"unit, but uses {', '.join(needs)}"
    return ""


@pytest.fixture(scope="session", autouse=True)
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Servers write their admin keys here and clients read them (not ~/.config).

    One per xdist worker (each worker is a session with its own temporary directory), so
    servers of different workers never share it.
    """
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
    stop_cleanly(proc)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server of the test's own."""
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log").start()
    yield proc
    stop_cleanly(proc)
