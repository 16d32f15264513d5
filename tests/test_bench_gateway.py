"""bench/gateway.py end to end: its quick mode against a real server with the HTTP gateway,
then the JSON it writes (`make bench-http` writes bench/http.json the same way).

Two of the issue's targets have a wide margin on any machine seen so far and are held here:
direct HTTP p50 within 1.2x the gRPC direct call's, and the status stream of a completed
request under 0.3 ms more than its plain status. The submit-rate share (at least 80% of
gRPC's at concurrency 64) swings by 20 points from run to run on 2 shared cores, so it is
reported by the benchmark (bench/RESULTS.md) rather than held by this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.bench]

SECTIONS = {
    "direct": {"grpc_echo", "asgi_echo", "falrt_grpc_direct", "falrt_http_direct"},
    "submit": {"grpc_echo", "falrt_grpc_submit", "falrt_http_submit"},
    "sse": {"completed_status", "completed_stream", "falrt_grpc_submit_watch",
            "falrt_http_submit_stream"},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-http") / "http.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gateway.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=150, cwd=REPO,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_every_target_is_measured_without_a_failed_call(report: dict[str, Any]) -> None:
    for section, targets in SECTIONS.items():
        assert set(report[section]) == targets, section
        for name, figures in report[section].items():
            assert figures["errors"] == 0, (section, name)
            assert figures["calls"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_direct_http_and_the_completed_status_stream_meet_their_targets(
    report: dict[str, Any],
) -> None:
    judged = report["judged"]
    assert judged["direct.http_over_grpc_p50_ratio"] <= 1.2, judged
    assert judged["sse.completed_stream_added_p50_ms"] < 0.3, judged
    assert set(judged["targets"]) == {"direct.http_over_grpc_p50_ratio<=1.2",
                                      "submit.http_share_of_grpc_rps>=0.8",
                                      "sse.completed_stream_added_p50_ms<0.3"}
