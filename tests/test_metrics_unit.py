"""The metrics module and the health rules, in-process: the planes of tests/inprocess.py
(real scheduler, dispatcher, fleet and recorder over the memory store) report to a real
`Metrics`, read back from its registry as Prometheus would read it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from falrt.gpus import Gpu, GpuMonitor, GpuSample
from falrt.server.control.health import Verdict, app_problem
from falrt.server.fleet.scaling import ScalingLoop
from falrt.server.metrics import ERROR_TYPES, OTHER, Metrics, StateCollector
from falrt.server.queue.webhooks import WebhookStats
from falrt.server.state.apps import Apps
from falrt.server.state.runners import RunnerState
from falrt.server.state.work import DirectCall, QueuedRequest
from falrt.store.records import ErrorRecord, Outcome, Priority
from tests.harness import REPO
from tests.inprocess import Lab, completed, lab, run, until

pytestmark = pytest.mark.unit


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the registry, as the text format a scrape gets carries it."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, metric: str, /, **labels: str) -> float | None:
    return samples(metrics).get((metric, frozenset(labels.items())))


def planes_metrics(world: Lab) -> Metrics:
    assert world.planes.metrics is not None  # (on unless --no-metrics)
    return world.planes.metrics


def test_a_queued_request_counts_its_outcome_its_wait_its_run_and_the_cold_start(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            world.deploy("echo")
            request_id = await world.submit("echo")
            runner = await world.runner("echo")
            item = await world.assigned(runner)
            world.answer(runner, item)
            queued = await world.planes.scheduler.lookup(request_id)
            assert isinstance(queued, QueuedRequest)
            await completed(queued)
            metrics = planes_metrics(world)
            endpoint = {"app": "echo", "endpoint": "/", "kind": "queue"}
            assert value(metrics, "falrt_requests_total", **endpoint, outcome="ok") == 1
            assert value(metrics, "falrt_queue_wait_seconds_count", **endpoint) == 1
            assert value(metrics, "falrt_run_seconds_count", **endpoint) == 1
            assert value(metrics, "falrt_cold_start_seconds_count", app="echo",
                         machine_type="S") == 1

    run(scenario)


def test_a_failed_attempt_that_is_retried_counts_a_retry_and_one_outcome(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=1) as world:
            world.deploy("flaky")
            request_id = await world.submit("flaky")
            first = await world.runner("flaky")
            await world.assigned(first)
            world.planes.fleet.detached(first)  # its stream broke mid-request
            second = await world.runner("flaky")
            item = await world.assigned(second)
            world.answer(second, item)
            queued = await world.planes.scheduler.lookup(request_id)
            assert isinstance(queued, QueuedRequest)
            await completed(queued)
            metrics = planes_metrics(world)
            assert value(metrics, "falrt_retries_total", app="flaky",
                         condition="connection_error") == 1
            assert value(metrics, "falrt_requests_total", app="flaky", endpoint="/",
                         kind="queue", outcome="ok") == 1
            # The queue wait is the first attempt's: the retry does not count twice.
            assert value(metrics, "falrt_queue_wait_seconds_count", app="flaky",
                         endpoint="/", kind="queue") == 1

    run(scenario)


def test_queue_depth_runners_and_slots_are_read_from_the_planes_at_scrape_time(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=1) as world:
            world.deploy("busy")
            metrics = planes_metrics(world)
            metrics.registry.register(StateCollector(
                world.planes.apps, world.planes.fleet.runners,
                lambda: WebhookStats(pending=1, delivered=2, abandoned=3, dropped=4)))
            await world.submit("busy")
            runner = await world.runner("busy")
            await world.assigned(runner)
            for _ in range(3):
                await world.submit("busy")
            await world.submit("busy", priority=Priority.LOW)
            assert value(metrics, "falrt_queue_depth", app="busy", priority="normal") == 3
            assert value(metrics, "falrt_queue_depth", app="busy", priority="low") == 1
            assert value(metrics, "falrt_runners", app="busy", revision="rev-1",
                         state="running", machine_type="S") == 1
            assert value(metrics, "falrt_slots_in_use", app="busy") == 1
            assert value(metrics, "falrt_slots", app="busy") == 1
            assert value(metrics, "falrt_webhook_deliveries_total", outcome="abandoned") == 3
            assert value(metrics, "falrt_webhooks_pending") == 1

    run(scenario)


def test_labels_stay_bounded_an_unknown_path_or_error_type_counts_as_other() -> None:
    metrics = Metrics(Apps())  # no app is deployed: no path is known
    call = QueuedRequest("r-1", "ghost", "/made/up/1", b"", "", Priority.NORMAL, seq=1)
    strange = ErrorRecord("a_runner_invented_this", "?", 13)
    metrics.finished(call, Outcome(error=strange))
    metrics.finished(call, Outcome(error=ErrorRecord("request_timeout", "late", 4)))
    assert value(metrics, "falrt_requests_total", app="ghost", endpoint=OTHER, kind="queue",
                 outcome=OTHER) == 1
    assert value(metrics, "falrt_requests_total", app="ghost", endpoint=OTHER, kind="queue",
                 outcome="request_timeout") == 1
    assert "request_timeout" in ERROR_TYPES and "startup_failed" in ERROR_TYPES


def test_each_server_has_its_own_registry() -> None:
    async def scenario() -> None:
        one, two = Metrics(Apps()), Metrics(Apps())
        call = DirectCall("r-1", "app", "/", b"", "", Priority.NORMAL, seq=1)
        one.finished(call, Outcome())
        assert value(one, "falrt_requests_total", app="app", endpoint=OTHER, kind="direct",
                     outcome="ok") == 1
        assert value(two, "falrt_requests_total", app="app", endpoint=OTHER, kind="direct",
                     outcome="ok") is None

    run(scenario)


def test_gpu_figures_become_one_series_per_gpu_and_none_without_gpus() -> None:
    class TwoGpus:
        def sample(self) -> list[GpuSample]:
            return [GpuSample(0, "GPU-a", "NVIDIA H200", 75, 10, 100),
                    GpuSample(1, "GPU-b", "NVIDIA H200", 0, 0, 100)]

    metrics = Metrics(Apps())
    no_webhooks = WebhookStats(pending=0, delivered=0, abandoned=0, dropped=0)
    metrics.registry.register(StateCollector(Apps(), {}, lambda: no_webhooks, TwoGpus()))
    gpu = {"gpu": "0", "uuid": "GPU-a", "name": "NVIDIA H200"}
    assert value(metrics, "falrt_gpu_utilization_ratio", **gpu) == 0.75
    assert value(metrics, "falrt_gpu_memory_used_bytes", **gpu) == 10
    assert value(metrics, "falrt_gpu_memory_total_bytes", gpu="1", uuid="GPU-b",
                 name="NVIDIA H200") == 100
    bare = Metrics(Apps())
    bare.registry.register(StateCollector(Apps(), {}, lambda: no_webhooks, None))
    assert not [k for k in samples(bare) if k[0].startswith("falrt_gpu")]


# -- health rules -----------------------------------------------------------------------


def test_an_app_is_healthy_with_a_serving_runner_or_nothing_wrong_and_not_in_crash_backoff(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path, max_concurrency=1, crash_backoff_step_s=60.0) as world:
            app = world.deploy("fragile")
            assert app_problem(app, []) == ""  # no runner yet: it starts one on demand
            await world.submit("fragile")
            started = await world.backend.next_start("fragile")
            started.exit(1)  # its setup failed
            runners = world.planes.fleet.runners
            await until(lambda: any(r.state is RunnerState.CRASH_BACKOFF
                                    for r in runners.values()))
            problem = app_problem(app, list(runners.values()))
            assert "fail to start" in problem
            verdict = Verdict((), {"fragile": problem})
            assert verdict.serving and verdict.app_serving("fragile") is False
            assert verdict.app_serving("missing") is None

    run(scenario)


def test_no_app_serves_while_the_server_cannot() -> None:
    verdict = Verdict(("the store cannot write (no space left)",), {"fine": ""})
    assert not verdict.serving
    assert verdict.app_serving("fine") is False


def test_the_scaling_loop_counts_as_stalled_from_a_wake_until_its_next_pass() -> None:
    async def scenario() -> None:
        loop = ScalingLoop(Apps(), {}, lambda app, decision: None)
        now = time.monotonic()
        assert loop.stalled_s(now + 100) == 0.0  # nothing waits for it
        loop.wake()  # the loop does not run: the wake waits
        assert loop.stalled_s(now + 100) >= 99

    run(scenario)


def test_the_planes_report_a_running_scaling_loop_as_healthy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            world.deploy("echo")
            await world.submit("echo")  # wakes the loop
            fleet = world.planes.fleet
            await until(lambda: fleet.scaling_problem(time.monotonic() + 3600) == "")
            fleet.wake()  # (the loop gets no turn before the next line)
            assert "has not run for" in fleet.scaling_problem(time.monotonic() + 3600)
            assert fleet.scaling_problem(time.monotonic()) == ""

    run(scenario)


def every_family() -> set[str]:
    """The name of every metric a server exports (as scraped: counters with `_total`)."""
    class OneGpu:
        def sample(self) -> list[GpuSample]:
            return [GpuSample(0, "GPU-a", "NVIDIA H200", 1, 1, 1)]

    metrics = Metrics(Apps())
    stats = WebhookStats(pending=0, delivered=0, abandoned=0, dropped=0)
    metrics.registry.register(StateCollector(Apps(), {}, lambda: stats, OneGpu()))
    text = generate_latest(metrics.registry).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def test_docs_list_every_metric_and_the_grafana_dashboard_queries_only_real_ones() -> None:
    families = every_family()
    assert "falrt_requests_total" in families and "falrt_queue_depth" in families
    table = (REPO / "docs" / "observability.md").read_text()
    assert {name for name in families if f"| `{name}` |" not in table} == set()
    dashboard = json.loads((REPO / "docs" / "grafana" / "falrt.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"falrt_[a-z_]+", expr)}
    series = {f"{family}{suffix}" for family in families
              for suffix in ("", "_bucket", "_count", "_sum")}
    assert used and used <= series


def test_no_gpu_monitor_without_gpus_or_for_gpus_nvml_does_not_know() -> None:
    assert GpuMonitor.open([]) is None
    # Without NVML (this CI) or with it (a GPU host), a UUID no GPU has gives no figures.
    assert GpuMonitor.open([Gpu(0, "GPU-00000000-made-up", "NVIDIA H200", 1 << 30)]) is None
