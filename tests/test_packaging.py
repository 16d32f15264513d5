"""The light client: `pip install falrt` is the SDK, the clients and the client commands, with
none of the server's dependencies (they come with `falrt[server]`); it imports without uvloop
and without POSIX-only modules; it ships `py.typed`; and a server-only command run without
the extra says how to install it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The distributions of the server extra, and the top-level modules they install.
SERVER_DISTRIBUTIONS = {"grpcio-health-checking", "grpcio-reflection", "uvloop", "cryptography",
                        "httpx", "asyncpg", "nvidia-ml-py", "docker", "starlette", "uvicorn"}
SERVER_MODULES = ("uvloop", "docker", "asyncpg", "cryptography", "starlette", "uvicorn",
                  "httpx", "pynvml", "grpc_health", "grpc_reflection")
# Dependencies of the tests and the benchmarks, which a user's install never needs either.
DEV_DISTRIBUTIONS = {"torch", "hypothesis", "pytest", "matplotlib", "pydantic", "mypy", "ruff"}
# Run in a subprocess: these modules cannot be imported (as on a machine without the server
# extra, or on Windows without fcntl); then imports falrt and its client.
WITHOUT_SERVER_EXTRA = (
    "import sys\n"
    f"for name in {(*SERVER_MODULES, 'fcntl')!r}:\n"
    "    sys.modules[name] = None\n"
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


@pytest.mark.unit
def test_the_base_dependencies_hold_no_server_or_dev_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_requirement_name(r) for r in project["dependencies"]}
    server = {_requirement_name(r) for r in project["optional-dependencies"]["server"]}
    assert not base & (SERVER_DISTRIBUTIONS | DEV_DISTRIBUTIONS), base
    assert server >= SERVER_DISTRIBUTIONS, server
    assert "grpcio-status" in base


@pytest.mark.unit
def test_importing_falrt_and_its_client_needs_no_server_module_nor_fcntl() -> None:
    result = _python(
        WITHOUT_SERVER_EXTRA
        + "import falrt, falrt.client, falrt.client.credentials, falrt.errors\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {SERVER_MODULES!r}\n"
        "             and sys.modules[n] is not None))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.unit
def test_the_cli_loads_without_the_server_extra() -> None:
    result = _python(WITHOUT_SERVER_EXTRA + "from cli.main import main\n"
                     "main(['--help'], prog_name='falrt')\n")
    assert result.returncode == 0, result.stderr
    assert "server" in result.stdout


@pytest.mark.unit
@pytest.mark.parametrize("args", [
    ["server", "--listen", "127.0.0.1:0"],
    ["certs", "dev", "--dir", "unused"],
    ["images", "build-env", "--base", "unused"],
    ["images", "build-base", "--no-cache"],
])
def test_a_server_only_command_without_the_extra_says_to_install_it(args: list[str]) -> None:
    result = _python(WITHOUT_SERVER_EXTRA + "from cli.main import main\n"
                     f"main({args!r}, prog_name='falrt')\n")
    assert result.returncode == 1, result.stderr
    assert "install falrt[server]" in result.stderr
    assert "pip install 'falrt[server]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_falrt_ships_py_typed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["falrt"]
    assert (ROOT / "falrt" / "py.typed").is_file()


@pytest.mark.e2e
def test_pip_install_falrt_into_a_fresh_venv_is_the_light_client(tmp_path: Path) -> None:
    """The real thing: `pip install` of this tree into a new virtual environment (from the
    configured index or cache) installs no server dependency; falrt and its client import,
    uvloop absent; py.typed is installed; `falrt server` says to install falrt[server]."""
    source = tmp_path / "src"  # a copy: pip builds a local directory in place
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".falrt-local", "build", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", "node_modules"))
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions(
        path=[str(p) for p in env.glob("lib/python*/site-packages")])}
    assert "falrt" in installed and "grpcio-status" in installed
    assert not installed & (SERVER_DISTRIBUTIONS | DEV_DISTRIBUTIONS), installed
    code = ("import sys, falrt, falrt.client; from importlib.resources import files; "
            "assert 'uvloop' not in sys.modules; "
            "print(files('falrt').joinpath('py.typed').is_file())")
    probe = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "True"
    server = subprocess.run([env / "bin" / "falrt", "server"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert server.returncode == 1 and "install falrt[server]" in server.stderr, server.stderr
