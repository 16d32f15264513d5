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

pytestmark = [pytest.mark.e2e, pytest.mark.bench, pytest.mark.docker]

CASES = {"deploy/hello/cached", "deploy/six/cached", "deploy/six/not_cached",
         "zero/hello/cached", "zero/six/cached"}
# The project's cold-start targets (issue 2, bench/RESULTS.md): hello, cached environment,
# from a request at zero runners. Stated here rather than read from the report, so that a
# slow start fails this test whatever the benchmark concludes.
TARGET_S = {"process": 1.5, "docker": 3.0}


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
    measured = cases["zero/hello/cached"]["median_s"]
    assert measured < TARGET_S[backend], (
        f"{backend} cold start from zero runners took {measured:.2f} s; the target is "
        f"{TARGET_S[backend]} s\n{report['_stdout']}")
    assert report["targets"][backend] == {
        "target_s": TARGET_S[backend], "median_s": measured, "holds": True}
    assert f"| {backend} | zero runners | hello | cached |" in report["_stdout"]


def test_process_backend(report: dict[str, Any]) -> None:
    assert report["reps"] == 1
    assert report["commit"] and report["machine"]["cpus"]
    check_backend(report, "process")


def test_docker_backend(report: dict[str, Any]) -> None:
    if "docker" in report["skipped"]:
        pytest.skip(report["skipped"]["docker"])
    assert report["docker_base"].startswith("falrt-base:")
    check_backend(report, "docker")
