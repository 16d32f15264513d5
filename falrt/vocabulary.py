"""The closed sets falrt's parts share, each defined once: the SDK, the server, the client
and the CLI import them from here.

They are `StrEnum`s: a member is the string it stands for, so stored records, gRPC fields
and command-line choices keep the plain strings they always had.
"""

from __future__ import annotations

import enum


class AppAuth(enum.StrEnum):
    """Who may call an app (fal's `app_auth`): its owner's keys, anyone, or any valid key."""

    PRIVATE = "private"
    PUBLIC = "public"
    SHARED = "shared"


class RetryCondition(enum.StrEnum):
    """Why an attempt failed, for the retry rule (fal's names; falrt/server/queue/retries.py).

    - `timeout`: the attempt ran past the app's request_timeout (its runner is killed);
    - `connection_error`: the runner went away mid-request;
    - `server_error`: the handler failed and asked for a retry (`needs_retry`).
    """

    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    CONNECTION_ERROR = "connection_error"


class CancelOutcome(enum.StrEnum):
    """What a cancel of a queued request did (fal's answers)."""

    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class KeyScope(enum.StrEnum):
    """What an API key may do: ADMIN the control plane and calls, API calls only."""

    ADMIN = "ADMIN"
    API = "API"


class DeployStrategy(enum.StrEnum):
    """How a deploy or a rollback switches an app: `rolling` starts a runner of the new
    revision and switches once it is ready; `recreate` switches at once."""

    ROLLING = "rolling"
    RECREATE = "recreate"


class InputCheck(enum.StrEnum):
    """How much of an endpoint's input schema the server checks before a runner sees an
    input (falrt/server/queue/input_check.py): none of it, all of it, or its shape (objects,
    arrays, required and unknown fields). The SDK chooses per input type at deploy."""

    NONE = "none"
    EXACT = "exact"
    SHAPE = "shape"

    @property
    def number(self) -> int:
        """Its number in the contract (falrt.v1.InputCheck) and in stored revisions."""
        return _INPUT_CHECK_NUMBERS.index(self)

    @classmethod
    def from_number(cls, number: int) -> InputCheck:
        """The check a contract number stands for; NONE for a number this version does not
        know (a newer client's check is skipped, never guessed)."""
        return _INPUT_CHECK_NUMBERS[number] if 0 <= number < len(_INPUT_CHECK_NUMBERS) \
            else cls.NONE


_INPUT_CHECK_NUMBERS = (InputCheck.NONE, InputCheck.EXACT, InputCheck.SHAPE)


def names(members: type[enum.StrEnum]) -> tuple[str, ...]:
    """The strings of a closed set, in definition order (for messages and CLI choices)."""
    return tuple(member.value for member in members)


__all__ = [
    "AppAuth", "CancelOutcome", "DeployStrategy", "InputCheck", "KeyScope", "RetryCondition",
    "names",
]
