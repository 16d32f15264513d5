"""CLI errors: one `ClickException` subclass per exit code, and the one mapping from falrt.

Exit codes: 1 other failures, 2 usage (click's own), 3 not found, 4 invalid argument or
validation failure, 5 the request failed, 6 server unreachable, 7 request not completed yet,
130 interrupted (the request was cancelled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from falrt.errors import (
    FalrtError,
    InvalidArgumentError,
    NotCompletedError,
    NotFoundError,
    RequestCancelledError,
    RequestTimeoutError,
    ResourceExhaustedError,
    RunnerDisconnectedError,
    RunnerServerError,
    StartupFailedError,
    StartupTimeoutError,
    UnavailableError,
)


class CliError(click.ClickException):
    """A failure the CLI reports with a message and a distinct exit code."""

    exit_code = 1


class NotFound(CliError):
    exit_code = 3


class InvalidInput(CliError):
    exit_code = 4


class RequestFailed(CliError):
    exit_code = 5


class ServerUnreachable(CliError):
    exit_code = 6


class NotCompleted(CliError):
    exit_code = 7


class Interrupted(CliError):
    exit_code = 130


_REQUEST_FAILURES: tuple[type[FalrtError], ...] = (
    RunnerServerError,
    RequestTimeoutError,
    StartupTimeoutError,
    StartupFailedError,
    RunnerDisconnectedError,
    RequestCancelledError,
    ResourceExhaustedError,
)


def to_cli_error(error: FalrtError, host: str) -> CliError:
    """The CLI error (message and exit code) that reports `error`."""
    if isinstance(error, _REQUEST_FAILURES):
        return RequestFailed(_with_traceback(error))
    if isinstance(error, UnavailableError):
        return ServerUnreachable(
            f"cannot reach the falrt server at {host}: is `falrt server` running? "
            f"set --host or FALRT_HOST; a TLS server needs https://HOST:PORT and the CA "
            f"it trusts (--tls-ca), a mutual-TLS one a client certificate ({error.message})"
        )
    if isinstance(error, NotFoundError):
        return NotFound(str(error))
    if isinstance(error, InvalidArgumentError):
        return InvalidInput(str(error))
    if isinstance(error, NotCompletedError):
        return NotCompleted(str(error))
    return CliError(f"{error.error_type}: {error}")


def _with_traceback(error: FalrtError) -> str:
    text = f"{error.error_type}: {error}"
    return f"{text}\n{error.traceback.rstrip()}" if error.traceback else text


@contextlib.contextmanager
def reporting_errors(host: str) -> Iterator[None]:
    """Re-raises falrt exceptions inside the block as the matching CLI error."""
    try:
        yield
    except FalrtError as exc:
        raise to_cli_error(exc, host) from exc
