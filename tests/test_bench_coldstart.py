"""bench/coldstart.py end to end: its quick mode (one repetition) against real servers, the
process backend always and the docker backend when an engine answers (CI starts one); then
the JSON it writes.

The docker part is skipped, with the reason bench/coldstart.py gives, only when no Docker
engine answers (scripts/docker.sh starts one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import REPO

CASES = {"deploy/hello/cached", "deploy/six/cached", "deploy/six/not_cached",
         "zero/hello/cached", "zero/six/cached"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("coldstart") / "coldstart.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "coldstart.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=150, cwd=REPO,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["_stdout"] = done.stdout
    return result


def check_backend(report: dict[str, Any], backend: str) -> None:
    cases = report["backends"][backend]
    assert set(cases) == CASES
    for key, case in cases.items():
        assert case["n"] == 1 == len(case["samples"]), key
        assert case["output_ok"] is True, key  # every call returned Hello, coldstart!
        assert 0 < case["min_s"] <= case["median_s"] <= case["max_s"] < 300, (key, case)
        for sample in case["samples"]:
            assert sample["output_ok"] is True and sample["calls"] >= 1, (key, sample)
            if key.startswith("deploy/"):
                assert 0 < sample["deploy_cli_s"] < sample["s"], (key, sample)
    # Building an environment costs more than finding it.
    assert cases["deploy/six/not_cached"]["median_s"] > cases["deploy/six/cached"]["median_s"]
    target = report["targets"][backend]
    assert target["median_s"] == cases["zero/hello/cached"]["median_s"]
    assert target["holds"] == (target["median_s"] < target["target_s"])
    assert f"| {backend} | zero runners | hello | cached |" in report["_stdout"]


def test_process_backend(report: dict[str, Any]) -> None:
    assert report["reps"] == 1
    assert report["commit"] and report["machine"]["cpus"]
    check_backend(report, "process")
    assert report["targets"]["process"]["target_s"] == 1.5


def test_docker_backend(report: dict[str, Any]) -> None:
    if "docker" in report["skipped"]:
        pytest.skip(report["skipped"]["docker"])
    assert report["docker_base"].startswith("falrt-base:")
    check_backend(report, "docker")
    assert report["targets"]["docker"]["target_s"] == 3.0
