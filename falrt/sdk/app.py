"""`falrt.App`: the class a user subclasses to define an app (fal's `fal.App`).

A subclass declares its settings as class attributes or class keywords, loads its model in
`setup()`, and serves requests from methods decorated with `@falrt.endpoint(path)`. Everything
is checked when the class is created: unknown or badly typed options, an overridden
`__init__`, malformed endpoints and duplicate paths raise TypeError (ValueError for values out
of range). Apps are instantiated only by the runner (`instantiate`); user code never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from falrt.sdk.context import RequestContext, request_var
from falrt.sdk.endpoints import Endpoint, collect_endpoints, endpoint
from falrt.sdk.options import (
    FAL_UNSUPPORTED,
    OPTION_NAMES,
    FalOptionWarning,
    kebab_case,
    validate_options,
)

__all__ = ["App", "FalOptionWarning", "RequestContext", "endpoint", "instantiate"]

A = TypeVar("A", bound="App")

_instantiating: ContextVar[bool] = ContextVar("falrt_instantiating", default=False)


class App:
    """Base class of falrt apps. Override `setup`, `teardown`, `handle_exit` and add endpoints.

    Lifecycle inside a runner: `setup()` once before any request; endpoints called
    concurrently up to `max_multiplexing`; on shutdown `handle_exit()` first (on SIGTERM),
    then in-flight requests finish, then `teardown()` once.
    """

    # pip specs; or fal's list of lists: install stages, each installed by its own
    # `pip install` after the one before it (falrt/requirement_stages.py).
    requirements: ClassVar[list[str] | list[list[str]]] = []
    machine_type: ClassVar[str | list[str]] = "S"
    num_gpus: ClassVar[int | None] = None
    # How many of this app's one-GPU runners may share one GPU (falrt's own; fal has no
    # such option): more runner processes, hence more CPU, feeding one fast GPU.
    runners_per_gpu: ClassVar[int | None] = None
    app_name: ClassVar[str | None] = None
    app_auth: ClassVar[str | None] = None
    keep_alive: ClassVar[float | None] = None
    min_concurrency: ClassVar[int | None] = None
    max_concurrency: ClassVar[int | None] = None
    concurrency_buffer: ClassVar[int | None] = None
    concurrency_buffer_perc: ClassVar[float | None] = None
    scaling_delay: ClassVar[float | None] = None
    max_multiplexing: ClassVar[int | None] = None
    request_timeout: ClassVar[float | None] = None
    startup_timeout: ClassVar[float | None] = None
    termination_grace_period_seconds: ClassVar[float | None] = None
    # Failure conditions never retried ("timeout", "server_error", "connection_error").
    skip_retry_conditions: ClassVar[list[str] | None] = None
    # Extra attempts per condition, e.g. {"timeout": 0, "connection_error": 3}.
    retry_config: ClassVar[dict[str, int] | None] = None
    # The secrets of its environment the app receives as environment variables (None: all).
    secrets: ClassVar[list[str] | None] = None
    # The docker backend: a Dockerfile (its text) to build the app's base image from
    # (python3 with venv in it); the server adds falrt and the requirements on top.
    dockerfile: ClassVar[str | None] = None
    # Files and folders bundled with the app (fal's app_files), relative to
    # `app_files_context_dir` (itself relative to the app file's folder, its default; a
    # folder above it works too); the runner's working directory is the app file's folder,
    # as on fal. `app_files_ignore`: regular expressions searched in each path (None: fal's
    # default, DEFAULT_APP_FILES_IGNORE).
    app_files: ClassVar[list[str] | None] = None
    app_files_ignore: ClassVar[list[str] | None] = None
    app_files_context_dir: ClassVar[str | None] = None
    # Importable modules (names) bundled with the app wherever they live locally.
    local_python_modules: ClassVar[list[str] | None] = None
    # True: request logs reach only keys of the app's owner, API or ADMIN (other callers
    # allowed to read a request get it without logs), as on fal.
    private_logs: ClassVar[bool | None] = None

    __falrt_endpoints__: ClassVar[Mapping[str, Endpoint]] = {}

    def __init_subclass__(cls, **options: Any) -> None:
        unknown = sorted(set(options) - OPTION_NAMES - set(FAL_UNSUPPORTED))
        if unknown:
            raise TypeError(f"{cls.__qualname__}: unknown App option(s) {', '.join(unknown)}")
        super().__init_subclass__()
        if "__init__" in vars(cls):
            raise TypeError(
                f"{cls.__qualname__} must not override __init__; load models in setup()"
            )
        for name, value in options.items():
            setattr(cls, name, value)
        validate_options(cls.__qualname__, {name: getattr(cls, name) for name in OPTION_NAMES})
        _warn_unsupported(cls)
        cls.__falrt_endpoints__ = collect_endpoints(cls)

    def __init__(self) -> None:
        if not _instantiating.get():
            raise RuntimeError(
                f"{type(self).__qualname__} is instantiated by the falrt runner only; "
                "deploy it with `falrt deploy` (initialise state in setup())"
            )

    @classmethod
    def endpoints(cls) -> Mapping[str, Endpoint]:
        """The app's endpoints by path (resolved at class creation)."""
        return cls.__falrt_endpoints__

    @classmethod
    def resolved_app_name(cls) -> str:
        """`app_name`, or the kebab-case of the class name when unset."""
        return cls.app_name or kebab_case(cls.__name__)

    @property
    def current_request(self) -> RequestContext | None:
        """The request the calling handler serves (None in setup/teardown)."""
        return request_var.get()

    def setup(self) -> None:
        """Runs once per runner before any request. Load models here."""

    def teardown(self) -> None:
        """Runs once per runner after the last request finished."""

    def handle_exit(self) -> None:
        """Runs first on SIGTERM, while in-flight requests may still run (signal them)."""


def unsupported_options(cls: type[App]) -> dict[str, str]:
    """The fal options `cls` sets that falrt does not implement: name -> what to do."""
    return {name: why for name, why in FAL_UNSUPPORTED.items() if _sets(cls, name)}


def _sets(cls: type[App], name: str) -> bool:
    """True when `cls` gives `name` a value (an endpoint method named `image` is no option)."""
    value = getattr(cls, name, None)
    return value is not None and not callable(value) and not isinstance(value, property)


def _warn_unsupported(cls: type[App]) -> None:
    for name, why in unsupported_options(cls).items():
        warnings.warn(f"{cls.__qualname__}: fal option {name} is not implemented by falrt and "
                      f"is ignored: {why}", FalOptionWarning, stacklevel=3)


@contextmanager
def _allow_instantiation() -> Iterator[None]:
    token = _instantiating.set(True)
    try:
        yield
    finally:
        _instantiating.reset(token)


def instantiate(cls: type[A]) -> A:
    """Creates an instance of an App class, as the runner does (no `setup()` yet).

    For the runner shim and local test harnesses; raises TypeError if `cls` is not an App.
    """
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise TypeError(f"{cls!r} is not a falrt.App subclass")
    with _allow_instantiation():
        return cls()
