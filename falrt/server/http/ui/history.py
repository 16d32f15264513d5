"""The last hour of queue depth, request rate and runner count, for the dashboard's charts.

`History` is a bounded ring of `Sample`s (by default one per 10 s, 360 of them: an hour),
filled by `Sampler`, whose one loop is owned by its `Tasks` and runs from `start` until
`close`. A sample costs one pass over the apps and the runners, every 10 s: nothing on the
request path. Memory only: a restarted server starts a new hour.

The request rate is the requests runners finished (queue and direct path alike: each slot
released counts one), per second over the sample's interval, from each runner's `served`
counter. What runners served before `start` is not counted; a runner first seen later
counts from zero (it is new). The last point of a chart is `Sampler.current`: now, not
kept, so the charts end at the present rather than at the last sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from falrt.server.state.apps import Apps
from falrt.server.state.runners import ALIVE_STATES, RunnerHandle
from falrt.server.tasks import Tasks

log = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 10.0
SAMPLES_KEPT = 360


@dataclass(frozen=True)
class Sample:
    """What the server looked like at `at` (wall clock)."""

    at: float
    queue_depth: int  # work waiting in every app's queue, retries in backoff included
    requests_per_s: float  # finished since the previous sample, per second
    runners: int  # alive (starting, idle or running)


class History:
    """The latest `kept` samples, oldest first. Loop-affine."""

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self._samples: deque[Sample] = deque(maxlen=kept)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def samples(self) -> list[Sample]:
        return list(self._samples)


class ServedCounter:
    """Turns the runners' `served` counters into a count of requests finished since the
    last call. Runners come and go: each one's last count is kept while it is seen."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def finished(self, runners: Iterable[RunnerHandle]) -> int:
        """Requests finished since the last call; the next call counts from now."""
        runners = list(runners)
        total = self.peek(runners)
        self._seen = {runner.runner_id: runner.served for runner in runners}
        return total

    def peek(self, runners: Iterable[RunnerHandle]) -> int:
        """Requests finished since the last `finished`, which it leaves as it is."""
        return sum(max(0, r.served - self._seen.get(r.runner_id, 0)) for r in runners)


def queue_depth(apps: Apps) -> int:
    return sum(len(app.queue) + len(app.retrying) for app in apps)


class Sampler:
    """Samples the server into `history` every `interval_s`. `runners` lists every runner
    it should count (alive and lately ended, so that requests a runner finished just before
    it ended are counted). `start` once; `close` cancels the loop and is idempotent."""

    def __init__(
        self, apps: Apps, runners: Callable[[], Iterable[RunnerHandle]],
        history: History, interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._apps = apps
        self._runners = runners
        self.history = history
        self._interval_s = interval_s
        self._counter = ServedCounter()
        self._last = time.time()
        self._tasks = Tasks("dashboard sampler")

    def start(self) -> None:
        self._counter.finished(self._runners())  # what was served before now is not a rate
        self._tasks.spawn(self._loop(), name="sample the dashboard's charts")

    async def close(self) -> None:
        await self._tasks.close()

    def sample(self) -> Sample:
        """A sample of now, kept in the history."""
        now = time.time()
        runners = list(self._runners())
        sample = self._sample(now, runners, self._counter.finished(runners))
        self._last = now
        self.history.add(sample)
        return sample

    def current(self) -> Sample:
        """A sample of now, not kept (the charts end at now, not at the last sample)."""
        runners = list(self._runners())
        return self._sample(time.time(), runners, self._counter.peek(runners))

    def _sample(self, now: float, runners: list[RunnerHandle], finished: int) -> Sample:
        elapsed = max(now - self._last, 1e-3)
        return Sample(at=now, queue_depth=queue_depth(self._apps),
                      requests_per_s=finished / elapsed,
                      runners=sum(1 for r in runners if r.state in ALIVE_STATES))

    async def _loop(self) -> None:
        """Samples until cancelled; a sample that fails is logged and the next one taken
        (the charts get a gap, the server nothing worse)."""
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("the dashboard could not sample the server")
            await asyncio.sleep(self._interval_s)


def sparkline(values: Sequence[float], width: int = 300, height: int = 40) -> str:
    """The points of an SVG polyline drawing `values` left to right, scaled so the
    largest touches the top ("" for no values). Pure: the page sets it as an attribute."""
    if not values:
        return ""
    if len(values) == 1:
        values = [values[0], values[0]]  # (a level line, not a lone point)
    top = max(max(values), 1e-9)
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - (v / top) * height:.1f}"
                    for i, v in enumerate(values))
