"""Server settings: one frozen, typed object built once at the edge (the CLI) and passed down.

`falrt server` reads its options in `cli/server.py`, each from its flag or its `FALRT_*`
variable (click's `envvar`: FALRT_LISTEN, FALRT_DATA_DIR, FALRT_OWNER, FALRT_BACKEND,
FALRT_RAY_ADDRESS, FALRT_ADVERTISE, FALRT_RUNNER_LINK, FALRT_RUNNER_LINK_LISTEN,
FALRT_DOCKER_BASE, FALRT_REGISTRY, FALRT_STORE,
FALRT_RETRY_BACKOFF_S,
FALRT_RESULT_RETENTION_S, FALRT_GPU_INVENTORY, FALRT_LEASE_S, FALRT_RECONNECT_WINDOW_S,
FALRT_WEBHOOK_ALLOW, FALRT_TLS_CERT, FALRT_TLS_KEY, FALRT_TLS_CLIENT_CA, FALRT_TLS_RUNNER_*,
FALRT_TLS_SERVER_NAME, FALRT_HTTP_LISTEN, FALRT_HTTP_QUEUE_LISTEN, FALRT_PUBLIC_URL,
FALRT_METRICS, FALRT_METRICS_LISTEN, FALRT_ZYGOTE, FALRT_FILE_STORE, FALRT_MAX_FILE_BYTES,
FALRT_FILE_EXPIRY_S, FALRT_S3_ENDPOINT, FALRT_S3_BUCKET, FALRT_S3_REGION), and
passes them down in a `ServerSettings`. Durations end in `_s`, sizes in `_bytes`.

These other places of the server process read `os.environ`, each for one reason:
- this module, `default_data_dir`: `XDG_DATA_HOME` (the data directory when none is given);
- `falrt.server.fleet.secret_box`: `FALRT_SECRETS_KEY`, once at start: when set, the key secrets
  are encrypted with, instead of `<data_dir>/secrets.key` (servers that share a PostgreSQL
  store must share the key);
- `falrt.client.credentials`: `FALRT_CREDENTIALS` and `XDG_CONFIG_HOME`, the credentials
  file in which the server records its first-start admin key for the CLI;
- `falrt.backends.process`: every runner's environment starts as a copy of the server's,
  less `FALRT_*`, `PYTHONPATH` and `VIRTUAL_ENV` (the docker backend copies none of it);
- the venv and pip subprocesses that build process-backend environments inherit it all;
- libraries read their own: the Docker SDK (`docker.from_env` in `falrt.backends.docker`
  and `falrt.images.engine`) `DOCKER_HOST` and its TLS variables, asyncpg the `PG*`
  variables for what a PostgreSQL DSN leaves out, boto3 (`falrt.files.s3`) the `AWS_*`
  credentials of the S3 file store.

Outside the server: the clients and the CLI read `FALRT_HOST`, `FALRT_TLS_CA`,
`FALRT_TLS_CLIENT_CERT` and `FALRT_TLS_CLIENT_KEY` (`falrt.client.connection`, `falrt --host`
and `--tls-*`), `FALRT_KEY` and the credentials file's location (`falrt.client.credentials`),
the CLI reads `FALRT_ENV` for `--env`, and `falrt certs dev` `XDG_CONFIG_HOME` for its default
directory (`falrt.dev_certs`). The runner shim reads its environment in
`shim/settings.py` and `shim/gpu_stats.py` (`CUDA_VISIBLE_DEVICES`).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_OWNER = "local"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/falrt`, or `~/.local/share/falrt`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "falrt"


class AppDefaults(msgspec.Struct, frozen=True):
    """Server defaults for app settings the app leaves unset (fal's server defaults)."""

    keep_alive_s: float = 60.0
    min_concurrency: int = 0
    max_concurrency: int = 2
    concurrency_buffer: int = 0
    concurrency_buffer_perc: float = 0.0
    scaling_delay_s: float = 0.0
    max_multiplexing: int = 1
    request_timeout_s: float = 3600.0
    startup_timeout_s: float = 600.0
    termination_grace_period_s: float = 5.0


class TlsFiles(msgspec.Struct, frozen=True):
    """`falrt server --tls-*`: PEM files, read by `falrt.tls` (docs/security.md, "TLS")."""

    cert: Path  # the server's certificate chain
    key: Path  # its private key (never given to runners)
    # Mutual TLS: every client (runners included) must show a certificate this CA signed.
    client_ca: Path | None = None
    # The roots runners verify the server with; None: the certificates of `cert`.
    runner_ca: Path | None = None
    # The client certificate and key runners show under mutual TLS (runner code can read them).
    runner_cert: Path | None = None
    runner_key: Path | None = None
    # The name runners expect in the server's certificate; "": the host they dial.
    server_name: str = ""


class ServerSettings(msgspec.Struct, frozen=True):
    """Everything `falrt server` is configured with."""

    listen: str = DEFAULT_LISTEN
    data_dir: Path = msgspec.field(default_factory=default_data_dir)
    owner: str = DEFAULT_OWNER
    backend: str = "process"
    # The ray backend: the cluster's address ("auto", "HOST:6379", "ray://HOST:10001").
    ray_address: str = "auto"
    # HOST:PORT runners dial ("": the listen address; port 0: the port bound).
    advertise: str = ""
    # How runners reach the server (docs/runners.md, "The runner link"): "auto", the
    # process backend's runners over the stream link and the others over gRPC; "grpc", the
    # RunnerLink service on the gRPC port for all; "stream", the stream link (frames on a
    # plain connection, falrt/streamlink.py), process backend only. The stream link listens
    # on `runner_link_listen`: HOST:PORT on loopback or unix:PATH; "": a Unix socket in a
    # 0700 folder of the data dir (falrt/server/api/runner_stream.py).
    runner_link: str = "auto"
    runner_link_listen: str = ""
    # The docker backend: the base of environment images, and the registry they go to.
    docker_base: str = ""
    registry: str = ""
    store: str = "sqlite"
    # The process backend forks runners from a warm template process per interpreter
    # (falrt/backends/zygote.py); False: every runner starts a new interpreter.
    zygotes: bool = True
    # Python interpreter that runs runners of apps without requirements (the server's own).
    runner_python: str = ""
    app_defaults: AppDefaults = AppDefaults()
    max_message_bytes: int = 64 * 1024 * 1024
    max_bundle_bytes: int = 256 * 1024 * 1024
    # How long the server waits for runners to finish when it stops.
    shutdown_grace_s: float = 5.0
    # The docker backend: how long runner containers wait for a restarted server to adopt
    # them (their server went away); 0: they stop with the server (docs/docker.md).
    runner_reconnect_s: float = 60.0
    # Backoff before a failed attempt is retried: base * 2 ** (attempts - 1), at most cap.
    retry_backoff_base_s: float = 1.0
    retry_backoff_cap_s: float = 30.0
    # Completed requests are deleted this long after they completed.
    result_retention_s: float = 24 * 3600.0
    # The log file of a runner that no longer runs is removed once nothing was written to
    # it for this long (docs/runners.md).
    runner_log_retention_s: float = 24 * 3600.0
    # A failed start delays the app's next start by step * consecutive failures, at most
    # cap (fal: 30 s steps, 10 minutes); no capacity for any of its machine types delays it
    # by no_capacity_wait (fal: 20 s).
    crash_backoff_step_s: float = 30.0
    crash_backoff_cap_s: float = 600.0
    no_capacity_wait_s: float = 20.0
    # TERMINATED runners listed by `falrt runners list --state terminated` (the latest).
    ended_runners_kept: int = 200
    # A JSON file describing this host's GPUs instead of NVML (falrt/gpus.py); None: NVML.
    gpu_inventory: Path | None = None
    # PostgreSQL store: a server that has not renewed its lease for this long is taken
    # over by the others (docs/stores.md).
    cluster_lease_s: float = 10.0
    # Networks (CIDRs) webhooks may reach although they are not public: receivers on the
    # operator's own network (falrt/server/queue/webhook_targets.py).
    webhook_allow: tuple[str, ...] = ()
    # JSON inputs are checked against their endpoint's schema when they arrive
    # (falrt/server/queue/input_check.py); False: only runners validate.
    input_check: bool = True
    # Traces (falrt/server/tracing.py): the OTLP/HTTP collector spans are exported to (its
    # base URL, e.g. http://127.0.0.1:4318; "": none, and no spans are made unless
    # `tracing`, which makes them without exporting).
    otlp_endpoint: str = ""
    tracing: bool = False
    # TLS on the gRPC port (and for the runners' link), and HTTPS on the HTTP ports; None:
    # plaintext (HTTP then only on a loopback address).
    tls: TlsFiles | None = None
    # The HTTP edge (docs/http.md): HOST:PORT of fal's queue and direct APIs ("": off), of
    # a second listener serving the queue API at its root ("": none), and the URL callers
    # reach the first at, for the URLs the queue API returns ("": each call's scheme and Host).
    http_listen: str = ""
    http_queue_listen: str = ""
    public_url: str = ""
    # Prometheus metrics (docs/observability.md): kept and served at `/metrics` of
    # --http-listen unless off; HOST:PORT of a listener serving only /metrics and /healthz
    # ("": none).
    metrics: bool = True
    metrics_listen: str = ""
    # The file store (docs/files.md): where files live ("local": <data_dir>/files), the
    # largest file an upload may announce, and how long a file is kept unless its upload
    # says otherwise.
    file_store: str = "local"
    max_file_bytes: int = 4 * 1024**3
    file_expiry_s: float = 7 * 24 * 3600.0
    # A payload over this many bytes travels by file reference (docs/files.md, "Payloads by
    # reference"): the runners' outputs and the HTTP edge's inputs; 0: always inline.
    payload_ref_bytes: int = 1024 * 1024
    # The S3 file store (`file_store = "s3"`): its bucket, the service's URL ("": AWS's
    # own endpoint for the region) and region ("": boto3's default). Credentials come
    # from the AWS_* environment, never from settings.
    s3_bucket: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "falrt.db"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def venvs_dir(self) -> Path:
        return self.data_dir / "venvs"

    @property
    def runner_logs_dir(self) -> Path:
        return self.data_dir / "runners"


def advertised(advertise: str, port: int) -> str:
    """`--advertise HOST:PORT` as runners dial it (port 0 or none: the port bound); "" when
    not given (runners dial the listen address)."""
    if not advertise:
        return ""
    host, _, wanted = advertise.rpartition(":") if ":" in advertise else (advertise, "", "")
    return f"{host}:{wanted if wanted not in ('', '0') else port}"
