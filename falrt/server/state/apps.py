"""Deployed apps as both planes hold them: live revision, resolved settings, queue, and why
their runners fail to start. The control plane adds and removes apps (`Apps.put`, `pop`);
the queue and the fleet read them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from falrt import errors, machines
from falrt.autoscaler.policy import ScalingSettings
from falrt.gpus import GpuShare
from falrt.limits import MAX_DURATION_SECONDS
from falrt.server.state.appqueue import AppQueue
from falrt.server.state.work import QueuedRequest
from falrt.settings import AppDefaults
from falrt.store.records import AppConfig, AppRecord, Revision

# fal's two kinds of scaling settings (fal-semantics 9.3). `falrt apps scale` may set any
# of them; on the next deploy the runtime-tunable ones are kept and the code-specific ones
# go back to the code's values (`--reset-scale` drops all).
RUNTIME_TUNABLE = (
    "keep_alive_s", "min_concurrency", "max_concurrency", "concurrency_buffer",
    "concurrency_buffer_perc", "scaling_delay_s", "request_timeout_s",
)
CODE_SPECIFIC = ("max_multiplexing", "startup_timeout_s", "machine_types")
SCALE_FIELDS = RUNTIME_TUNABLE + CODE_SPECIFIC


def set_fields(config: AppConfig) -> dict[str, object]:
    """The scale fields `config` sets (None and an empty machine type list set nothing)."""
    return {name: value for name in SCALE_FIELDS
            if (value := getattr(config, name)) is not None and value != ()}


def with_overrides(config: AppConfig, scale: AppConfig) -> AppConfig:
    """The code's settings with `falrt apps scale` overrides applied."""
    return msgspec.structs.replace(config, **set_fields(scale))


def kept_on_deploy(scale: AppConfig, *, reset: bool) -> AppConfig:
    """The overrides that survive a deploy: the runtime-tunable ones, unless `reset`."""
    if reset:
        return AppConfig()
    kept = {k: v for k, v in set_fields(scale).items() if k in RUNTIME_TUNABLE}
    return AppConfig(**kept)  # type: ignore[arg-type]


def check_config(config: AppConfig) -> None:
    """Raises InvalidArgumentError for settings no app may have."""
    counts = {
        "min_concurrency": config.min_concurrency,
        "max_concurrency": config.max_concurrency,
        "concurrency_buffer": config.concurrency_buffer,
    }
    for name, value in counts.items():
        if value is not None and value < 0:
            raise errors.InvalidArgumentError(f"{name} must be >= 0, got {value}")
    if config.max_multiplexing is not None and config.max_multiplexing < 1:
        raise errors.InvalidArgumentError("max_multiplexing must be >= 1")
    low, high = config.min_concurrency, config.max_concurrency
    if low is not None and high is not None and low > high:
        raise errors.InvalidArgumentError(
            f"min_concurrency ({low}) is larger than max_concurrency ({high})"
        )
    if config.num_gpus is not None and config.num_gpus < 0:
        raise errors.InvalidArgumentError(f"num_gpus must be >= 0, got {config.num_gpus}")
    _check_gpu_share(config)
    for name in ("keep_alive_s", "scaling_delay_s", "request_timeout_s", "startup_timeout_s",
                 "termination_grace_period_s", "concurrency_buffer_perc"):
        value = getattr(config, name)
        if value is not None and not 0 <= value <= MAX_DURATION_SECONDS:  # (NaN is neither)
            raise errors.InvalidArgumentError(
                f"{name} must be a number from 0 to {MAX_DURATION_SECONDS}, got {value}")
    for machine in config.machine_types:
        try:
            machines.check(machine)
        except ValueError as exc:
            raise errors.InvalidArgumentError(str(exc)) from None


def _check_gpu_share(config: AppConfig) -> None:
    share = config.runners_per_gpu
    if share is None:
        return
    if share < 1:
        raise errors.InvalidArgumentError(f"runners_per_gpu must be >= 1, got {share}")
    if share > 1 and (config.num_gpus or 1) > 1:
        raise errors.InvalidArgumentError(
            f"runners_per_gpu ({share}) shares one GPU among runners, so num_gpus must be 1, "
            f"got {config.num_gpus}")


@dataclass(frozen=True)
class EffectiveSettings:
    """An app's settings with the server defaults filled in."""

    scaling: ScalingSettings
    request_timeout_s: float
    startup_timeout_s: float
    grace_period_s: float
    machine_types: tuple[str, ...]
    num_gpus: int  # per runner, for GPU machine types (at least 1 there)
    runners_per_gpu: int = 1  # of the app's one-GPU runners on one GPU

    def gpu_share(self, app_name: str) -> GpuShare | None:
        """How the app's runners share GPUs (None: each has its GPUs whole)."""
        return GpuShare(app_name, self.runners_per_gpu) if self.runners_per_gpu > 1 else None

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
            machine_types=config.machine_types or ("S",),
            num_gpus=config.num_gpus or 1,
            runners_per_gpu=config.runners_per_gpu or 1,
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
    # Why and until when nothing of the app starts (fal's CRASH_BACKOFF, or no capacity);
    # changed only by the methods below.
    startup_failures: int = 0
    backoff_until: float = 0.0  # monotonic
    last_startup_error: str = ""

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(e.path for e in self.revision.endpoints)

    def switch(self, record: AppRecord, revision: Revision, settings: EffectiveSettings) -> None:
        """A new live revision (a deploy, a rollback): its starts owe nothing to the old
        revision's failures."""
        self.record, self.revision, self.settings = record, revision, settings
        self.runner_started()

    def runner_started(self) -> None:
        """A runner of the live revision is ready: any backoff ends (fal)."""
        self.startup_failures, self.backoff_until, self.last_startup_error = 0, 0.0, ""

    def start_failed(self, reason: str, step_s: float, cap_s: float) -> float:
        """A runner failed to start: the next start waits `step_s` times the failures in a
        row, at most `cap_s`. Returns that delay."""
        self.startup_failures += 1
        delay = min(step_s * self.startup_failures, cap_s)
        self.wait_before_starting(reason, delay)
        return delay

    def wait_before_starting(self, reason: str, delay_s: float) -> None:
        """Nothing of the app starts for `delay_s` (e.g. no capacity), for `reason`."""
        self.backoff_until = time.monotonic() + delay_s
        self.last_startup_error = reason

    def waiting_reason(self) -> str:
        """Why queued requests wait, when something is wrong (else "")."""
        if not self.last_startup_error:
            return ""
        left = self.backoff_until - time.monotonic()
        retry = f"; next start in {left:.0f} s" if left > 0 else ""
        return f"runners of {self.name} fail to start: {self.last_startup_error}{retry}"


class Apps:
    """The deployed apps of this server by full name. Loop-affine; only the control plane
    adds or removes apps."""

    def __init__(self) -> None:
        self._by_name: dict[str, AppState] = {}

    def get(self, name: str) -> AppState | None:
        return self._by_name.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[AppState]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def put(self, app: AppState) -> None:
        self._by_name[app.name] = app

    def pop(self, name: str) -> AppState | None:
        return self._by_name.pop(name, None)
