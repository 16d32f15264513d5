"""bench/autoscale.py end to end: its quick trace against a real server, then its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.bench]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_trace_draws_the_picture_and_sums_it_up(tmp_path: Path) -> None:
    png, summary_path = tmp_path / "autoscale.png", tmp_path / "autoscale.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "autoscale.py"), "--quick",
         "--out-png", str(png), "--out-json", str(summary_path)],
        capture_output=True, text=True, timeout=90, cwd=REPO,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    summary = json.loads(summary_path.read_text())

    app = summary["app"]
    assert (app["max_concurrency"], app["max_multiplexing"]) == (4, 2)
    requests = summary["requests"]
    assert requests["submitted"] > 0
    assert requests["completed"] == requests["submitted"], requests
    assert requests["failed"] == 0
    assert 1 <= summary["peak_runners"] <= app["max_concurrency"]
    assert 1 <= summary["most_in_flight_on_one_runner"] <= app["max_multiplexing"]
    assert summary["peak_queue_depth"] >= 1
    assert 0 < summary["first_request_to_ready_runner_s"] < 30
    # Back to zero runners once keep_alive has passed after the last request, not before.
    back_to_zero = summary["last_completion_to_zero_runners_s"]
    assert back_to_zero is not None, "runners were still up when the trace ended"
    assert app["keep_alive_s"] - 1 <= back_to_zero < app["keep_alive_s"] + 20
    assert "RUNNING" in summary["states_seen"]
    assert [p["name"] for p in summary["trace"]] == ["idle", "burst", "plateau", "idle"]
    series = summary["series"]
    assert len(series["t"]) == len(series["queue"]) == len(series["in_flight"]) > 10
    assert "peak runners" in done.stdout  # the summary table
