"""Plain records the store keeps. No generated code here: servicers convert at the edge."""

from __future__ import annotations

import enum

import msgspec


class Status(enum.IntEnum):
    """A request's status; the values match falrt.v1.RequestStatus."""

    IN_QUEUE = 1
    IN_PROGRESS = 2
    COMPLETED = 3


class Priority(enum.IntEnum):
    """Queue priority; the values match falrt.v1.Priority. Lower value goes first."""

    NORMAL = 1
    LOW = 2


class AppConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    """An app's settings as its code declares them; None means the server default."""

    # pip specifiers in install stages, an empty string ending each stage but the last
    # (falrt/requirement_stages.py); a list without one is one stage.
    requirements: tuple[str, ...] = ()
    machine_types: tuple[str, ...] = ()
    num_gpus: int | None = None
    # How many of the app's one-GPU runners may share a GPU (None: 1, each has its own).
    runners_per_gpu: int | None = None
    app_auth: str = ""
    keep_alive_s: float | None = None
    min_concurrency: int | None = None
    max_concurrency: int | None = None
    concurrency_buffer: int | None = None
    concurrency_buffer_perc: float | None = None
    scaling_delay_s: float | None = None
    max_multiplexing: int | None = None
    request_timeout_s: float | None = None
    startup_timeout_s: float | None = None
    termination_grace_period_s: float | None = None
    skip_retry_conditions: tuple[str, ...] = ()
    retry_config: dict[str, int] = msgspec.field(default_factory=dict)
    # The secrets of its environment the app receives (empty: all).
    secrets: tuple[str, ...] = ()
    # The docker backend: the app's own Dockerfile (text), the base of its environment.
    dockerfile: str = ""
    # fal's private_logs: request logs reach only keys of the app's owner.
    private_logs: bool = False


class EndpointRecord(msgspec.Struct, frozen=True):
    path: str
    name: str
    kind: int
    input_schema_json: str = ""
    output_schema_json: str = ""
    # falrt.v1.InputCheck's number (0: no check at the edge; revisions stored before it).
    input_check: int = 0


class Revision(msgspec.Struct, frozen=True):
    """One immutable deploy of an app."""

    revision_id: str
    app_name: str
    entrypoint: str
    bundle_sha256: str
    env_key: str
    config: AppConfig
    endpoints: tuple[EndpointRecord, ...]
    message: str
    created_at: float
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


class AppRecord(msgspec.Struct, frozen=True):
    """An app: a name pointing at its live revision, and the scaling settings
    `falrt apps scale` set (they override the revision's; unset fields do not)."""

    name: str
    revision_id: str
    created_at: float
    updated_at: float
    scale: AppConfig = AppConfig()
    # Who may call it: "private" (keys of its owner), "public" (anyone), "shared" (any key).
    auth: str = "private"


class EnvironmentRecord(msgspec.Struct, frozen=True):
    """An environment ("main" always exists and is not stored)."""

    name: str
    description: str
    created_at: float


class SecretRecord(msgspec.Struct, frozen=True):
    """A secret of one environment. `value` is encrypted by the server (the store never
    holds a plain value)."""

    environment: str
    name: str
    value: bytes
    created_at: float
    updated_at: float


class KeyRecord(msgspec.Struct, frozen=True):
    """An API key: `key_id:secret`; only the secret's SHA-256 is kept."""

    key_id: str
    secret_hash: str
    scope: str  # "ADMIN" or "API"
    owner: str
    description: str
    created_at: float
    revoked_at: float | None = None

class LogRecord(msgspec.Struct, frozen=True, array_like=True):
    timestamp: float
    message: str
    source: str


class ErrorRecord(msgspec.Struct, frozen=True):
    """A typed failure, as falrt.v1.ErrorInfo carries it."""

    error_type: str
    message: str
    grpc_code: int
    field_errors: tuple[tuple[str, str], ...] = ()
    traceback: str = ""


class Outcome(msgspec.Struct, frozen=True):
    """How a request ended: output bytes (untouched) or an error."""

    output: bytes = b""
    content_type: str = ""
    error: ErrorRecord | None = None
    inference_time_s: float = 0.0
    logs: tuple[LogRecord, ...] = ()


class RequestRecord(msgspec.Struct):
    """A queued request as stored. `seq` orders the queue (FIFO within a priority)."""

    request_id: str
    app_name: str
    path: str
    input: bytes
    content_type: str
    priority: Priority
    seq: int
    created_at: float
    status: Status = Status.IN_QUEUE
    attempts: int = 0
    outcome: Outcome | None = None
    completed_at: float | None = None
    # What the caller asked for at Submit (see falrt.v1.SubmitRequest).
    no_retry: bool = False
    retry_config: dict[str, int] = msgspec.field(default_factory=dict)
    start_deadline: float | None = None  # wall-clock seconds
    webhook_url: str = ""
    idempotency_key: str = ""
    # The server that holds the request when several share a PostgreSQL store ("": none).
    owner: str = ""


def without_outcome(record: RequestRecord) -> RequestRecord:
    """`record` as its `data` column keeps it: the outcome has a column of its own (a
    request stored completed would otherwise keep its output twice)."""
    if record.outcome is None:
        return record
    return msgspec.structs.replace(record, outcome=None)


class ClusterEventKind(enum.StrEnum):
    """What a ClusterEvent says."""

    QUEUED = "queued"  # a request may be claimed
    CLAIMED = "claimed"  # a server runs attempt `attempts` of a request
    COMPLETED = "completed"
    CANCEL = "cancel"  # asks the holder of a request to cancel it
    APP = "app"  # an app was deployed, scaled or deleted


class ClusterEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one server tells the others sharing its PostgreSQL store (docs/stores.md)."""

    kind: ClusterEventKind
    sender: str
    request_id: str = ""
    app: str = ""
    attempts: int = 0
