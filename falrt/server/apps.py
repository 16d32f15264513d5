"""Deployed apps as the scheduler holds them: live revision, resolved settings, queue."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from falrt.autoscaler.policy import ScalingSettings
from falrt.server.appqueue import AppQueue
from falrt.server.work import QueuedRequest
from falrt.settings import AppDefaults
from falrt.store.records import AppConfig, AppRecord, Revision


@dataclass(frozen=True)
class EffectiveSettings:
    """An app's settings with the server defaults filled in."""

    scaling: ScalingSettings
    request_timeout_s: float
    startup_timeout_s: float
    grace_period_s: float
    machine_type: str

    @classmethod
    def resolve(cls, config: AppConfig, defaults: AppDefaults) -> EffectiveSettings:
        def pick(value: float | int | None, default: float | int) -> float | int:
            return default if value is None else value

        scaling = ScalingSettings(
            min_concurrency=int(pick(config.min_concurrency, defaults.min_concurrency)),
            max_concurrency=int(pick(config.max_concurrency, defaults.max_concurrency)),
            concurrency_buffer=int(pick(config.concurrency_buffer, defaults.concurrency_buffer)),
            concurrency_buffer_perc=float(
                pick(config.concurrency_buffer_perc, defaults.concurrency_buffer_perc)
            ),
            keep_alive_s=float(pick(config.keep_alive_s, defaults.keep_alive_s)),
            scaling_delay_s=float(pick(config.scaling_delay_s, defaults.scaling_delay_s)),
            max_multiplexing=int(pick(config.max_multiplexing, defaults.max_multiplexing)),
        )
        return cls(
            scaling=scaling,
            request_timeout_s=float(pick(config.request_timeout_s, defaults.request_timeout_s)),
            startup_timeout_s=float(pick(config.startup_timeout_s, defaults.startup_timeout_s)),
            grace_period_s=float(
                pick(config.termination_grace_period_s, defaults.termination_grace_period_s)
            ),
            machine_type=config.machine_types[0] if config.machine_types else "S",
        )


@dataclass(eq=False)
class AppState:
    """One app: what is live, how it scales, what waits, and why runners fail to start."""

    record: AppRecord
    revision: Revision
    settings: EffectiveSettings
    queue: AppQueue = field(default_factory=AppQueue)
    # Queue-path requests waiting out a retry backoff (not in `queue` until it ends).
    retrying: set[QueuedRequest] = field(default_factory=set)
    startup_failures: int = 0
    backoff_until: float = 0.0  # monotonic
    last_startup_error: str = ""

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(e.path for e in self.revision.endpoints)

    def waiting_reason(self) -> str:
        """Why queued requests wait, when something is wrong (else "")."""
        if not self.last_startup_error:
            return ""
        left = self.backoff_until - time.monotonic()
        retry = f"; next start in {left:.0f} s" if left > 0 else ""
        return f"runners of {self.name} fail to start: {self.last_startup_error}{retry}"
