"""The server's Prometheus metrics: every definition, its help text and its labels.

Each server has its own `CollectorRegistry` (`Metrics.registry`), never the process-wide
default, so that several servers in one process (the unit tests) keep separate figures.
`docs/observability.md` lists every metric.

Two kinds of figures:
- events, counted where the server already handles them (one call per event: a request
  started or finished, a retry, a runner ready, a store batch committed). Label children are
  bound once per (app, endpoint, kind) and kept (`_Endpoint`), so a request costs a dict
  lookup and the observation itself, never a `.labels(...)` call.
- state (queue depth, runners by state, slots, webhooks, GPUs), computed when Prometheus
  scrapes by `StateCollector` from what the server holds in memory: nothing on the hot path.

Label sets are bounded: app names, endpoint paths of the app's live revision (any other
path counts as "other"), the four call kinds, error types of `falrt.errors` (any other, which
only a misbehaving runner could send, counts as "other"), runner states and machine types.
Never a request id.

Loop-affine, except the store's batch observer (`store_observer`), which SQLite's writer
thread calls: prometheus_client's metrics are thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from falrt import errors
from falrt.gpus import GpuSample
from falrt.server.state.apps import Apps
from falrt.server.state.runners import SERVING_STATES, RunnerHandle, RunnerState
from falrt.server.state.work import DirectCall, QueuedRequest, RealtimeSession, WorkItem
from falrt.store.records import Outcome

# Call kinds: the queue path and the three direct ones.
QUEUE, DIRECT, STREAM, REALTIME = "queue", "direct", "stream", "realtime"
OK = "ok"
OTHER = "other"
# Seconds: 1 ms to 10 minutes (a queue wait behind a cold start; a long generation).
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A cold start: from its start to the runner's Hello (environment builds included).
COLD_START_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Bound label children kept at most (app, raw path, kind); past it they are bound again.
MAX_BOUND = 10_000


def _error_types() -> frozenset[str]:
    found: set[str] = set()
    pending: list[type[errors.FalrtError]] = [errors.FalrtError]
    while pending:
        cls = pending.pop()
        found.add(cls.error_type)
        pending.extend(cls.__subclasses__())
    return frozenset(found)


ERROR_TYPES = _error_types()


def kind_of(item: WorkItem) -> str:
    """The call kind of a work item: queue, direct, stream or realtime."""
    if isinstance(item, QueuedRequest):
        return QUEUE
    if isinstance(item, RealtimeSession):
        return REALTIME
    if isinstance(item, DirectCall) and item.partials is not None:
        return STREAM
    return DIRECT


def outcome_label(outcome: Outcome) -> str:
    """"ok", or the error type (bounded: an unknown one is "other")."""
    if outcome.error is None:
        return OK
    kind = outcome.error.error_type
    return kind if kind in ERROR_TYPES else OTHER


class _Endpoint:
    """The bound label children of one (app, endpoint, kind)."""

    __slots__ = ("_labels", "_requests", "outcomes", "queue_wait", "run_time")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self._requests = metrics.requests
        self.queue_wait = metrics.queue_wait.labels(*labels)
        self.run_time = metrics.run_time.labels(*labels)
        self.outcomes: dict[str, Counter] = {}
        self._labels = labels

    def outcome(self, label: str) -> Counter:
        child = self.outcomes.get(label)
        if child is None:
            child = self.outcomes[label] = self._requests.labels(*self._labels, label)
        return child


class Metrics:
    """The server's metrics (see the module docstring). `apps` names the endpoints that
    count as themselves (the live revision's paths)."""

    def __init__(self, apps: Apps) -> None:
        self._apps = apps
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "falrt_requests", "Calls that ended, by app, endpoint, kind (queue, direct, "
            "stream, realtime) and outcome (ok or the error type).",
            ["app", "endpoint", "kind", "outcome"], registry=r)
        self.queue_wait = Histogram(
            "falrt_queue_wait_seconds", "Time from a call's arrival to the start of its "
            "first attempt on a runner.", ["app", "endpoint", "kind"], registry=r,
            buckets=TIME_BUCKETS)
        self.run_time = Histogram(
            "falrt_run_seconds", "Time from an attempt's start on a runner to its result.",
            ["app", "endpoint", "kind"], registry=r, buckets=TIME_BUCKETS)
        self.retries = Counter(
            "falrt_retries", "Queued requests retried, by app and retry condition.",
            ["app", "condition"], registry=r)
        self.cold_starts = Histogram(
            "falrt_cold_start_seconds", "Runner starts that became ready, by how long the "
            "start took (from PENDING to the runner's Hello); its _count counts cold starts.",
            ["app", "machine_type"], registry=r, buckets=COLD_START_BUCKETS)
        self.start_failures = Counter(
            "falrt_runner_start_failures", "Runner starts that failed (the app's runners "
            "wait in crash backoff).", ["app"], registry=r)
        self.store_write = Histogram(
            "falrt_store_write_seconds", "Time to commit one batch of store writes.",
            ["store"], registry=r, buckets=STORE_BUCKETS)
        self.store_batch = Histogram(
            "falrt_store_batch_size", "Writes committed together in one batch.",
            ["store"], registry=r, buckets=BATCH_BUCKETS)
        self._endpoints: dict[tuple[str, str, str], _Endpoint] = {}

    # -- events (called where the server handles them) ---------------------------------

    def _endpoint(self, item: WorkItem) -> _Endpoint:
        key = (item.app_name, item.path, kind_of(item))
        bound = self._endpoints.get(key)
        if bound is None:
            if len(self._endpoints) >= MAX_BOUND:  # (paths are checked at Submit: a guard)
                self._endpoints.clear()
            app = self._apps.get(item.app_name)
            path = item.path if app is not None and item.path in app.paths else OTHER
            bound = self._endpoints[key] = _Endpoint(self, (item.app_name, path, key[2]))
        return bound

    def started(self, item: WorkItem) -> None:
        """An attempt of `item` starts on a runner now; the first one ends its queue wait
        (a retry's wait is not counted again)."""
        now = time.monotonic()
        if not item.started_at:
            self._endpoint(item).queue_wait.observe(now - item.enqueued_at)
        item.started_at = now

    def ran(self, item: WorkItem) -> None:
        """The running attempt of `item` ended (a result, or a realtime session closed)."""
        if item.started_at:
            self._endpoint(item).run_time.observe(time.monotonic() - item.started_at)

    def finished(self, item: WorkItem, outcome: Outcome) -> None:
        """`item` ended with `outcome` (called once per call)."""
        self._endpoint(item).outcome(outcome_label(outcome)).inc()

    def retried(self, app_name: str, condition: str) -> None:
        self.retries.labels(app_name, condition).inc()

    def runner_ready(self, runner: RunnerHandle) -> None:
        """A runner said Hello: a cold start ended, timed from its latest PENDING."""
        started = next((at for state, at in reversed(runner.history())
                        if state is RunnerState.PENDING), None)
        if started is not None and not runner.adopted:
            self.cold_starts.labels(runner.app_name, runner.machine_type).observe(
                max(0.0, time.time() - started))

    def start_failed(self, app_name: str) -> None:
        self.start_failures.labels(app_name).inc()

    def store_observer(self, store: str) -> Callable[[int, float], None]:
        """What a store calls after each committed batch, with its size and duration.
        Thread-safe."""
        write, batch = self.store_write.labels(store), self.store_batch.labels(store)

        def observe(size: int, seconds: float) -> None:
            write.observe(seconds)
            batch.observe(size)

        return observe


class WebhookCounts(Protocol):
    """What the webhook sender reports (`WebhookSender.stats()`)."""

    @property
    def pending(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def abandoned(self) -> int: ...
    @property
    def dropped(self) -> int: ...


class GpuSource(Protocol):
    def sample(self) -> list[GpuSample]: ...


@dataclass(frozen=True, eq=False)  # (hashed by identity: the registry keeps it in a dict)
class StateCollector(Collector):
    """The figures computed at scrape time from the server's memory. Runs on the event
    loop (the scrape's route), which owns everything it reads."""

    apps: Apps
    runners: Mapping[str, RunnerHandle]
    webhooks: Callable[[], WebhookCounts]
    gpus: GpuSource | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._runners()
        yield from self._webhooks()
        if self.gpus is not None:
            yield from _gpu_families(self.gpus.sample())

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("falrt_queue_depth", "Calls waiting for a runner, by app "
                                  "and priority.", labels=["app", "priority"])
        retrying = GaugeMetricFamily("falrt_requests_retrying", "Queued requests waiting "
                                     "out a retry backoff.", labels=["app"])
        for app in self.apps:
            for priority, count in app.queue.lengths().items():
                depth.add_metric([app.name, priority.name.lower()], count)
            retrying.add_metric([app.name], len(app.retrying))
        yield depth
        yield retrying

    def _runners(self) -> Iterator[Metric]:
        runners = GaugeMetricFamily(
            "falrt_runners", "Runners, by app, revision, state and machine type.",
            labels=["app", "revision", "state", "machine_type"])
        used = GaugeMetricFamily("falrt_slots_in_use", "Runner slots running a call.",
                                 labels=["app"])
        total = GaugeMetricFamily("falrt_slots", "Slots of runners that take work (IDLE, "
                                  "RUNNING).", labels=["app"])
        counts: dict[tuple[str, str, str, str], int] = {}
        slots: dict[str, list[int]] = {}
        for r in list(self.runners.values()):
            key = (r.app_name, r.revision_id, r.state.name.lower(), r.machine_type)
            counts[key] = counts.get(key, 0) + 1
            pair = slots.setdefault(r.app_name, [0, 0])
            pair[0] += len(r.in_flight)
            if r.state in SERVING_STATES:
                pair[1] += r.max_multiplexing
        for key, count in counts.items():
            runners.add_metric(list(key), count)
        for app_name, (in_use, capacity) in slots.items():
            used.add_metric([app_name], in_use)
            total.add_metric([app_name], capacity)
        yield from (runners, used, total)

    def _webhooks(self) -> Iterator[Metric]:
        stats = self.webhooks()
        done = CounterMetricFamily("falrt_webhook_deliveries", "Webhook deliveries that "
                                   "ended, by outcome (delivered, abandoned after its last "
                                   "attempt, dropped before the first).", labels=["outcome"])
        for outcome, count in (("delivered", stats.delivered), ("abandoned", stats.abandoned),
                               ("dropped", stats.dropped)):
            done.add_metric([outcome], count)
        yield done
        yield GaugeMetricFamily("falrt_webhooks_pending", "Webhook deliveries not finished.",
                                value=stats.pending)


def _gpu_families(samples: Iterable[GpuSample]) -> Iterator[Metric]:
    labels = ["gpu", "uuid", "name"]
    busy = GaugeMetricFamily("falrt_gpu_utilization_ratio", "Share of the last sample "
                             "period the GPU was busy (NVML), 0 to 1.", labels=labels)
    used = GaugeMetricFamily("falrt_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                             labels=labels)
    total = GaugeMetricFamily("falrt_gpu_memory_total_bytes", "GPU memory (NVML).",
                              labels=labels)
    for s in samples:
        key = [str(s.index), s.uuid, s.name]
        busy.add_metric(key, s.utilization_percent / 100)
        used.add_metric(key, s.memory_used_bytes)
        total.add_metric(key, s.memory_total_bytes)
    yield from (busy, used, total)


__all__ = ["ERROR_TYPES", "Metrics", "StateCollector", "kind_of", "outcome_label"]
