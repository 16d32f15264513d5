"""The settings an App class declares (fal's class attributes), and their validation.

Each option is a class attribute of `App` that a subclass overrides as a class attribute or a
class keyword (`class MyApp(falrt.App, keep_alive=300)`). `None` means "the server default".
`validate_options` runs at class creation, so a bad value fails at import, not at deploy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from falrt.names import check_app_name
from falrt.vocabulary import AppAuth, RetryCondition, names

__all__ = [
    "APP_AUTH_MODES", "DEFAULT_APP_FILES_IGNORE", "FAL_UNSUPPORTED", "OPTION_NAMES",
    "FalOptionWarning",
    "kebab_case", "requirement_stages", "retry_counts", "validate_options",
]

APP_AUTH_MODES = names(AppAuth)  # (kept for the SDK's callers)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

Check = Callable[[str, Any], None]


class FalOptionWarning(UserWarning):
    """A fal option that falrt accepts but does not implement (it changes nothing)."""


def kebab_case(class_name: str) -> str:
    """`MyTextApp` -> `my-text-app`, `HTTPServer` -> `http-server`, `My_App` -> `my-app`."""
    words = _CAMEL_BOUNDARY.sub("-", class_name).replace("_", "-").lower()
    return re.sub(r"-+", "-", words).strip("-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> Check:
    def check(name: str, value: Any) -> None:
        if not _is_int(value):
            raise TypeError(f"App option {name} must be an int, got {value!r}")
        if value < minimum:
            raise ValueError(f"App option {name} must be >= {minimum}, got {value}")

    return check


def _number(*, positive: bool) -> Check:
    def check(name: str, value: Any) -> None:
        if not _is_number(value):
            raise TypeError(f"App option {name} must be a number, got {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"App option {name} must be {bound}, got {value}")

    return check


def _check_str_list(name: str, value: Any) -> None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"App option {name} must be a list of strings, got {value!r}")


def _check_requirements(name: str, value: Any) -> None:
    """A list of pip specs, or fal's list of lists (install stages)."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, list | tuple)
                                                         for v in value):
        for stage in value:
            _check_str_list(name, stage)
        return
    _check_str_list(name, value)


def requirement_stages(value: Any) -> list[list[str]]:
    """The install stages of `requirements` in order: fal's list of lists as it is, a plain
    list as one stage, nothing as none (the value must have passed validation)."""
    if not value:
        return []
    if all(isinstance(v, list | tuple) for v in value):
        return [list(stage) for stage in value]
    return [list(value)]


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"App option {name} must be True or False, got {value!r}")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"App option {name} must be a string, got {value!r}")


def _check_machine_type(name: str, value: Any) -> None:
    if isinstance(value, str):
        value = [value]
    _check_str_list(name, value)
    if not value or not all(value):
        raise ValueError(f"App option {name} must name at least one machine type")


def _check_app_name(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"App option {name} must be a string, got {value!r}")
    try:
        check_app_name(value)
    except ValueError as exc:
        raise ValueError(f"App option {name}: {exc}") from None


RETRY_CONDITIONS = names(RetryCondition)


def _check_conditions(name: str, value: Any) -> None:
    _check_str_list(name, value)
    unknown = sorted(set(value) - set(RETRY_CONDITIONS))
    if unknown:
        raise ValueError(f"App option {name} has unknown conditions {unknown}: "
                         f"use {RETRY_CONDITIONS}")


def _check_retry_config(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"App option {name} must be a dict of condition -> retries")
    _check_conditions(name, list(value))
    for condition, retries in value.items():
        if isinstance(retries, Mapping):  # fal's form: {"timeout": {"retries": 0}}
            if set(retries) != {"retries"}:
                raise TypeError(f"App option {name}[{condition!r}] must be "
                                f'{{"retries": N}} or N, got {retries!r}')
            retries = retries["retries"]
        _int_at_least(0)(f"{name}[{condition!r}]", retries)


def retry_counts(value: Mapping[str, Any] | None) -> dict[str, int]:
    """`retry_config` as condition -> extra attempts, from falrt's form (`{"timeout": 0}`)
    or fal's (`{"timeout": {"retries": 0}}`); the value must have passed validation."""
    return {condition: int(retries["retries"] if isinstance(retries, Mapping) else retries)
            for condition, retries in (value or {}).items()}


def _check_dockerfile(name: str, value: Any) -> None:
    if not isinstance(value, str) or "FROM" not in value.upper():
        raise ValueError(f"App option {name} must be the text of a Dockerfile (with a FROM)")


def _check_app_auth(name: str, value: Any) -> None:
    if value not in APP_AUTH_MODES:
        raise ValueError(f"App option {name} must be one of {APP_AUTH_MODES}, got {value!r}")


# fal's default `app_files_ignore`: regular expressions searched in each file's path
# (relative to the context dir, with "/" separators).
DEFAULT_APP_FILES_IGNORE = (r"\.pyc$", r"__pycache__/", r"\.git/", r"\.DS_Store$")


def _check_patterns(name: str, value: Any) -> None:
    _check_str_list(name, value)
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"App option {name}: {pattern!r} is not a regular expression: "
                             f"{exc}") from None


_CHECKS: dict[str, Check] = {
    "requirements": _check_requirements,
    "machine_type": _check_machine_type,
    "num_gpus": _int_at_least(0),
    "runners_per_gpu": _int_at_least(1),
    "app_name": _check_app_name,
    "app_auth": _check_app_auth,
    "keep_alive": _number(positive=False),
    "min_concurrency": _int_at_least(0),
    "max_concurrency": _int_at_least(0),
    "concurrency_buffer": _int_at_least(0),
    "concurrency_buffer_perc": _number(positive=False),
    "scaling_delay": _number(positive=False),
    "max_multiplexing": _int_at_least(1),
    "request_timeout": _number(positive=True),
    "startup_timeout": _number(positive=True),
    "termination_grace_period_seconds": _number(positive=False),
    "skip_retry_conditions": _check_conditions,
    "retry_config": _check_retry_config,
    "secrets": _check_str_list,
    "dockerfile": _check_dockerfile,
    "app_files": _check_str_list,
    "app_files_ignore": _check_patterns,
    "app_files_context_dir": _check_str,
    "local_python_modules": _check_str_list,
    "private_logs": _check_bool,
}

# fal.App attributes falrt accepts but does not implement: setting one warns (at import,
# hence at deploy) and changes nothing. See docs/porting-from-fal.md.
FAL_UNSUPPORTED: dict[str, str] = {
    "regions": "falrt runs where its server runs; there are no regions",
    "image": "use falrt's `dockerfile` (the Dockerfile's text) with the docker backend",
    "data_mounts": "mount shared storage on the machine and pass its path in a secret",
    "metrics_port": "falrt does not scrape a metrics port inside the runner",
    "exposed_port": "falrt has no direct server mode; serve through endpoints",
    "requirements_context_dir": "local-path requirements are not sent to the server",
    "python_version": "runners use the server's Python",
    "host_kwargs": "fal's internal host settings have no falrt meaning",
    "kind": "falrt apps always run in a virtual environment or the docker backend",
}

OPTION_NAMES: frozenset[str] = frozenset(_CHECKS)


def validate_options(class_name: str, values: Mapping[str, Any]) -> None:
    """Checks every option value (None is always allowed but for requirements/machine_type).

    Raises TypeError for a value of the wrong type and ValueError for one out of range.
    """
    for name, check in _CHECKS.items():
        value = values.get(name)
        if value is None and name not in ("requirements", "machine_type"):
            continue
        try:
            check(name, value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{class_name}: {exc}") from None
    low, high = values.get("min_concurrency"), values.get("max_concurrency")
    if low is not None and high is not None and low > high:
        raise ValueError(
            f"{class_name}: min_concurrency ({low}) is greater than max_concurrency ({high})"
        )
