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

__all__ = ["APP_AUTH_MODES", "OPTION_NAMES", "kebab_case", "validate_options"]

APP_AUTH_MODES = names(AppAuth)  # (kept for the SDK's callers)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

Check = Callable[[str, Any], None]


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
        _int_at_least(0)(f"{name}[{condition!r}]", retries)


def _check_dockerfile(name: str, value: Any) -> None:
    if not isinstance(value, str) or "FROM" not in value.upper():
        raise ValueError(f"App option {name} must be the text of a Dockerfile (with a FROM)")


def _check_app_auth(name: str, value: Any) -> None:
    if value not in APP_AUTH_MODES:
        raise ValueError(f"App option {name} must be one of {APP_AUTH_MODES}, got {value!r}")


_CHECKS: dict[str, Check] = {
    "requirements": _check_str_list,
    "machine_type": _check_machine_type,
    "num_gpus": _int_at_least(0),
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
