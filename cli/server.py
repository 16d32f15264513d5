"""`falrt server`: run the falrt server in the foreground."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from falrt.settings import DEFAULT_LISTEN, DEFAULT_OWNER, ServerSettings, TlsFiles

from .extras import server_extra
from .server_files import file_options
from .server_tls import tls_options

_DEFAULTS = ServerSettings(data_dir=Path("."))


@click.command()
@click.option("--listen", envvar="FALRT_LISTEN", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to serve on (env FALRT_LISTEN)")
@click.option("--data-dir", envvar="FALRT_DATA_DIR", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="where the store, bundles and runner environments live (env FALRT_DATA_DIR)")
@click.option("--owner", envvar="FALRT_OWNER", default=DEFAULT_OWNER, show_default=True,
              help="owner part of endpoint ids, owner/app (env FALRT_OWNER)")
@click.option("--backend", envvar="FALRT_BACKEND",
              type=click.Choice(["process", "docker", "ray"]), default="process",
              show_default=True,
              help="how runners run: local subprocesses, containers on the local Docker "
                   "engine (needs --docker-base), or Ray actors on a Ray cluster's nodes "
                   "(--ray-address; docs/scaling.md)")
@click.option("--ray-address", "ray_address", envvar="FALRT_RAY_ADDRESS",
              default=_DEFAULTS.ray_address, show_default=True,
              help="ray backend: the Ray cluster: auto (the one this host is a node of), "
                   "HOST:6379 (its GCS) or ray://HOST:10001 (Ray Client)")
@click.option("--advertise", "advertise", envvar="FALRT_ADVERTISE", default="",
              metavar="HOST:PORT",
              help="the gRPC address runners dial (runners on other hosts: the ray "
                   "backend) and their app code calls; default: the --listen address (port "
                   "0: the port bound)")
@click.option("--runner-link", "runner_link", envvar="FALRT_RUNNER_LINK",
              type=click.Choice(["auto", "grpc", "stream"]), default=_DEFAULTS.runner_link,
              show_default=True,
              help="how runners reach the server: auto, the process backend's runners over "
                   "the stream link (length-prefixed frames on a Unix socket) and docker and "
                   "ray runners over gRPC; grpc, the gRPC RunnerLink service for all; stream, "
                   "the stream link (process backend only; docs/runners.md; env "
                   "FALRT_RUNNER_LINK)")
@click.option("--runner-link-listen", "runner_link_listen", envvar="FALRT_RUNNER_LINK_LISTEN",
              default=_DEFAULTS.runner_link_listen, metavar="HOST:PORT|unix:PATH",
              help="where the stream link listens: a loopback address or a Unix socket "
                   "(default: a Unix socket in a 0700 folder of the data dir)")
@click.option("--docker-base", "docker_base", envvar="FALRT_DOCKER_BASE", default="",
              help="the docker backend's base image (`falrt images build-base` prints one)")
@click.option("--registry", envvar="FALRT_REGISTRY", default="",
              help="the docker backend pushes environment images to HOST:PORT/prefix and "
                   "runners pull them from there")
@click.option("--store", envvar="FALRT_STORE", default="sqlite", show_default=True,
              help="sqlite (a file in the data dir), memory, or a postgresql://... DSN "
                   "(env FALRT_STORE)")
@click.option("--retry-backoff", "retry_backoff_base_s", envvar="FALRT_RETRY_BACKOFF_S",
              type=click.FloatRange(min=0), default=_DEFAULTS.retry_backoff_base_s,
              show_default=True,
              help="seconds before the first retry of a failed attempt; doubles per attempt")
@click.option("--retry-backoff-cap", "retry_backoff_cap_s", type=click.FloatRange(min=0),
              default=_DEFAULTS.retry_backoff_cap_s, show_default=True,
              help="the longest wait before a retry, in seconds")
@click.option("--result-retention", "result_retention_s", envvar="FALRT_RESULT_RETENTION_S",
              type=click.FloatRange(min=1), default=_DEFAULTS.result_retention_s,
              show_default=True, help="seconds a completed request is kept")
@click.option("--runner-log-retention", "runner_log_retention_s",
              envvar="FALRT_RUNNER_LOG_RETENTION_S", type=click.FloatRange(min=1),
              default=_DEFAULTS.runner_log_retention_s, show_default=True,
              help="seconds the log of an ended runner is kept after its last line")
@click.option("--crash-backoff-step", "crash_backoff_step_s", type=click.FloatRange(min=0),
              default=_DEFAULTS.crash_backoff_step_s, show_default=True,
              help="seconds added to an app's wait before its next runner start, per "
                   "consecutive failed start")
@click.option("--crash-backoff-cap", "crash_backoff_cap_s", type=click.FloatRange(min=0),
              default=_DEFAULTS.crash_backoff_cap_s, show_default=True,
              help="the longest wait before a runner start after failed ones, in seconds")
@click.option("--gpu-inventory", "gpu_inventory", envvar="FALRT_GPU_INVENTORY", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a JSON file describing the host's GPUs, instead of asking NVML")
@click.option("--lease", "cluster_lease_s", envvar="FALRT_LEASE_S",
              type=click.FloatRange(min=0.5), default=_DEFAULTS.cluster_lease_s,
              show_default=True,
              help="with a PostgreSQL store: seconds after which the other servers take over "
                   "the requests of a server that stopped renewing its lease")
@click.option("--reconnect-window", "runner_reconnect_s", envvar="FALRT_RECONNECT_WINDOW_S",
              type=click.FloatRange(min=0), default=_DEFAULTS.runner_reconnect_s,
              show_default=True,
              help="docker backend: seconds runner containers wait for a restarted server, "
                   "which adopts them warm; 0 stops them with the server")
@click.option("--webhook-allow", "webhook_allow", envvar="FALRT_WEBHOOK_ALLOW", multiple=True,
              callback=lambda _ctx, _param, value: _networks(value), metavar="CIDR",
              help="a network webhooks may reach although it is not public, e.g. "
                   "10.1.0.0/16 for receivers on premises (repeat for more)")
@click.option("--http-listen", "http_listen", envvar="FALRT_HTTP_LISTEN", default="",
              metavar="HOST:PORT",
              help="serve fal's HTTP APIs here too: the direct API at the root, the queue API "
                   "under /queue (HTTPS with --tls-cert; plain HTTP on loopback only). Off "
                   "by default (env FALRT_HTTP_LISTEN; docs/http.md)")
@click.option("--http-queue-listen", "http_queue_listen", envvar="FALRT_HTTP_QUEUE_LISTEN",
              default="", metavar="HOST:PORT",
              help="a second HTTP listener serving the queue API at its root, for a "
                   "queue host name of its own (env FALRT_HTTP_QUEUE_LISTEN)")
@click.option("--public-url", "public_url", envvar="FALRT_PUBLIC_URL", default="",
              metavar="URL", callback=lambda _ctx, _param, value: _public_url(value),
              help="the URL callers reach --http-listen at (behind a reverse proxy), for the "
                   "status_url and response_url the queue API returns; default: each "
                   "call's scheme and Host (env FALRT_PUBLIC_URL)")
@click.option("--metrics-listen", "metrics_listen", envvar="FALRT_METRICS_LISTEN", default="",
              metavar="HOST:PORT",
              help="serve /metrics (Prometheus) and /healthz here too, without a key, plain "
                   "HTTP unless --tls-cert (they are on --http-listen as well; env "
                   "FALRT_METRICS_LISTEN; docs/observability.md)")
@click.option("--metrics/--no-metrics", "metrics", envvar="FALRT_METRICS", default=True,
              show_default=True,
              help="keep Prometheus metrics (--no-metrics: /metrics answers 404)")
@click.option("--input-check/--no-input-check", "input_check", envvar="FALRT_INPUT_CHECK",
              default=True, show_default=True,
              help="check JSON inputs against their endpoint's schema when they arrive "
                   "(--no-input-check: only runners validate; docs/requests.md)")
@click.option("--otlp-endpoint", "otlp_endpoint", envvar="FALRT_OTLP_ENDPOINT", default="",
              metavar="URL",
              help="export traces of requests to this OpenTelemetry collector (OTLP over "
                   "HTTP, e.g. http://127.0.0.1:4318); runners export their handlers' spans "
                   "there too (env FALRT_OTLP_ENDPOINT; docs/observability.md)")
@click.option("--tracing/--no-tracing", "tracing", envvar="FALRT_TRACING", default=False,
              help="make the spans of requests even without --otlp-endpoint (to measure "
                   "their cost; nothing is exported)")
@click.option("--zygote/--no-zygote", "zygotes", envvar="FALRT_ZYGOTE", default=True,
              show_default=True,
              help="process backend: fork runners from a warm template process per "
                   "environment, which starts them about 0.15 s sooner (--no-zygote: each "
                   "runner starts a new interpreter; docs/runners.md)")
@tls_options
@file_options
def server(
    listen: str, data_dir: Path | None, owner: str, backend: str, ray_address: str,
    advertise: str, runner_link: str, runner_link_listen: str, docker_base: str,
    registry: str, store: str, retry_backoff_base_s: float,
    retry_backoff_cap_s: float, result_retention_s: float, runner_log_retention_s: float,
    crash_backoff_step_s: float, crash_backoff_cap_s: float, gpu_inventory: Path | None,
    cluster_lease_s: float,
    runner_reconnect_s: float, webhook_allow: tuple[str, ...], http_listen: str,
    http_queue_listen: str, public_url: str, metrics_listen: str, metrics: bool,
    input_check: bool, otlp_endpoint: str, tracing: bool, zygotes: bool, tls: TlsFiles | None,
    file_settings: dict[str, Any],
) -> None:
    """Run the falrt server until interrupted."""
    with server_extra("server"):  # load the server only for this command
        from falrt.server.main import StartupError, run

    try:
        run(build_settings(
        listen=listen, data_dir=data_dir, owner=owner, store=store,
        retry_backoff_base_s=retry_backoff_base_s, retry_backoff_cap_s=retry_backoff_cap_s,
        result_retention_s=result_retention_s, runner_log_retention_s=runner_log_retention_s,
        crash_backoff_step_s=crash_backoff_step_s, crash_backoff_cap_s=crash_backoff_cap_s,
        cluster_lease_s=cluster_lease_s,
        gpu_inventory=gpu_inventory, backend=backend, ray_address=ray_address,
        advertise=advertise, runner_link=runner_link, runner_link_listen=runner_link_listen,
        docker_base=docker_base,
        registry=registry, runner_reconnect_s=runner_reconnect_s, webhook_allow=webhook_allow,
        tls=tls, http_listen=http_listen, http_queue_listen=http_queue_listen,
        public_url=public_url, metrics_listen=metrics_listen, metrics=metrics,
        input_check=input_check, otlp_endpoint=otlp_endpoint, tracing=tracing,
        zygotes=zygotes, **file_settings,
        ))
    except StartupError as exc:
        raise click.ClickException(f"the server cannot start: {exc}") from None


def build_settings(
    *, listen: str, data_dir: Path | None, owner: str, store: str = "sqlite", **tuning: Any
) -> ServerSettings:
    """Server settings from the command's options; unset options keep the defaults."""
    overrides: dict[str, Any] = {"listen": listen, "owner": owner, "store": store, **tuning}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.expanduser().resolve()
    return ServerSettings(**overrides)


def _public_url(value: str) -> str:
    """--public-url, checked to be an absolute http(s) URL; kept without a trailing slash."""
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise click.BadParameter("give an absolute URL such as https://falrt.example.com",
                                 param_hint="--public-url")
    return value.rstrip("/")


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    """The --webhook-allow values, each checked to be a CIDR."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--webhook-allow") from None
    return values
