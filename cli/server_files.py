"""`falrt server`'s file store options (docs/files.md), added to the command as one decorator
and passed down as the ServerSettings fields they set."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from falrt.settings import ServerSettings

R = TypeVar("R")
_DEFAULTS = ServerSettings()
FIELDS = ("file_store", "max_file_bytes", "file_expiry_s")


def file_options(command: Callable[..., R]) -> Callable[..., R]:
    """Adds --file-store, --max-file-bytes and --file-expiry to `command`, which receives
    them as `file_settings` (ServerSettings field -> value)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        settings = {name: kwargs.pop(name) for name in FIELDS}
        return command(*args, file_settings=settings, **kwargs)

    decorated: Callable[..., R] = click.option(
        "--file-expiry", "file_expiry_s", envvar="FALRT_FILE_EXPIRY_S",
        type=click.FloatRange(min=1), default=_DEFAULTS.file_expiry_s, show_default=True,
        help="seconds an uploaded file is kept unless its upload says otherwise "
             "(env FALRT_FILE_EXPIRY_S)")(wrapper)
    decorated = click.option(
        "--max-file-bytes", "max_file_bytes", envvar="FALRT_MAX_FILE_BYTES",
        type=click.IntRange(min=0), default=_DEFAULTS.max_file_bytes, show_default=True,
        help="the largest file an upload may announce (env FALRT_MAX_FILE_BYTES)")(decorated)
    return click.option(
        "--file-store", "file_store", envvar="FALRT_FILE_STORE", type=click.Choice(["local"]),
        default=_DEFAULTS.file_store, show_default=True,
        help="where uploaded files live: local (<data dir>/files)")(decorated)
