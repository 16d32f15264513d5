"""Serving the HTTP edge: uvicorn inside the server process, on the server's event loop.

uvicorn's `Server` is driven by its `startup` and `shutdown` only: no signal handlers (the
falrt server owns SIGTERM and SIGINT and its shutdown order), no lifespan, and no tick loop
(its one job, refreshing the Date header once a second, is turned off with the header).
Protocols: httptools for HTTP/1.1, websockets' sans-I/O implementation for WebSockets
(which reads the next message only once the app took the last: backpressure).

HTTPS uses the server's own certificate (`--tls-cert/--tls-key`, and `--tls-client-ca` for
mutual TLS). Without one, plain HTTP is served on a loopback address only, with a warning:
API keys would otherwise cross the network in clear.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import socket
import ssl

import uvicorn
from starlette.applications import Starlette

from falrt.server.http.app import build_app, build_metrics_app, build_queue_app
from falrt.server.http.gateway import Gateway
from falrt.settings import ServerSettings, TlsFiles

log = logging.getLogger(__name__)
WS = "websockets-sansio"
# A browser's WebSocket carries its key in the URL (`?fal_jwt_token=`, falrt/server/http/
# realtime.py); uvicorn logs the URL of a socket it refuses itself (no route): redacted.
_UVICORN_LOG = logging.getLogger("uvicorn.error")
_TOKEN = re.compile(r"(fal_jwt_token=)[^&\s\"']*")


class _RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "fal_jwt_token=" in message:
            record.msg, record.args = _TOKEN.sub(r"\1REDACTED", message), ()
        return True


_REDACT = _RedactKeys()


class ListenError(Exception):
    """An HTTP listener cannot start (bad address, port taken, plain HTTP off loopback)."""


class HttpListener:
    """One uvicorn listener: `bind` (blocking: certificate files, the socket), then `start`
    serves; `stop_accepting`, then `close`, stop it (each idempotent)."""

    def __init__(
        self, app: Starlette, address: str, tls: TlsFiles | None, grace_s: float,
        max_message_bytes: int,
    ) -> None:
        self.host, self.port = split_address(address)
        self._config = uvicorn.Config(
            app, http="httptools", ws=WS, lifespan="off", log_config=None, access_log=False,
            # A WebSocket message may be as large as a gRPC one: a larger realtime input is
            # the realtime route's payload_too_large (uvicorn would close with a bare 1009).
            ws_max_size=max_message_bytes,
            proxy_headers=False, server_header=False, date_header=False,
            timeout_graceful_shutdown=max(math.ceil(grace_s), 1),
            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE)
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None

    def bind(self) -> int:
        """Reads the certificate files and binds; returns the port. Blocking (run it in a
        thread). Raises ListenError (and ssl.SSLError, OSError for bad certificates)."""
        self._config.load()
        self._socket = bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        return self.port

    async def start(self) -> None:
        """Serves on the bound socket."""
        assert self._socket is not None, "bind() first"
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[self._socket])

    def stop_accepting(self) -> None:
        """No new connections; open ones close once their response is sent."""
        for server in getattr(self._server, "servers", ()):
            server.close()
        for connection in list(self._server.server_state.connections):
            connection.shutdown()

    async def close(self) -> None:
        """Waits for the calls in flight (at most the grace period), then cancels the rest
        (status streams, say) and closes every connection."""
        if not self._server.started:
            return
        self._server.started = False
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)


class HttpEdge:
    """The server's HTTP listeners: `--http-listen`, `--http-queue-listen` and
    `--metrics-listen` (any of them, or none)."""

    def __init__(self, gateway: Gateway, settings: ServerSettings) -> None:
        """(The server checks `check_addresses(settings)` first thing.)"""
        grace, size = settings.shutdown_grace_s, settings.max_message_bytes
        self.listeners: dict[str, HttpListener] = {}
        if settings.http_listen:
            self.listeners["http"] = HttpListener(build_app(gateway), settings.http_listen,
                                                  settings.tls, grace, size)
        if settings.http_queue_listen:
            self.listeners["http queue"] = HttpListener(
                build_queue_app(gateway), settings.http_queue_listen, settings.tls, grace, size)
        if settings.metrics_listen and gateway.observed is not None:
            self.listeners["metrics"] = HttpListener(
                build_metrics_app(gateway.observed), settings.metrics_listen, settings.tls,
                grace, size)
        _UVICORN_LOG.addFilter(_REDACT)

    def bind(self) -> list[tuple[str, str]]:
        """Binds every listener; returns (name, HOST:PORT) of each. Blocking. Raises
        ListenError (and ssl.SSLError, OSError for bad certificate files)."""
        bound = []
        for name, listener in self.listeners.items():
            port = listener.bind()
            bound.append((name, f"{_show_host(listener.host)}:{port}"))
        return bound

    async def start(self) -> None:
        """Serves on every bound listener."""
        for listener in self.listeners.values():
            await listener.start()

    def stop_accepting(self) -> None:
        for listener in self.listeners.values():
            listener.stop_accepting()

    async def close(self) -> None:
        for listener in self.listeners.values():
            await listener.close()


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) as (host, port). Raises ListenError."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"{address!r} is not HOST:PORT (say 127.0.0.1:8080; port 0 picks one)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_addresses(settings: ServerSettings) -> None:
    """Checks the HTTP addresses before anything starts: each is HOST:PORT, and without a
    certificate a loopback address (served with a warning), except `--metrics-listen`,
    which carries no key or payload (plain HTTP on any address). Raises ListenError."""
    if settings.metrics_listen:
        split_address(settings.metrics_listen)
    for flag, address in (("--http-listen", settings.http_listen),
                          ("--http-queue-listen", settings.http_queue_listen)):
        if not address:
            continue
        host, _ = split_address(address)
        if settings.tls is not None:
            continue
        if not is_loopback(host):
            raise ListenError(
                f"{flag} {address} would serve plain HTTP to the network, where API keys "
                "and payloads cross in clear: give the server a certificate (--tls-cert "
                "FILE --tls-key FILE; `falrt certs dev` makes one) or listen on 127.0.0.1")
        log.warning("%s %s serves plain HTTP (no --tls-cert): reachable from this machine "
                    "only; callers elsewhere need HTTPS", flag, address)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Raises ListenError (port taken, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
