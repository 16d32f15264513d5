"""The runner shim's settings: one frozen object built once from the environment.

This module reads the FALRT_* variables below (`ShimSettings.from_environ`, once at start).
The server's backend sets those marked "required", FALRT_BUNDLE_DIR,
FALRT_MAX_MULTIPLEXING and FALRT_GRACE_PERIOD_S; the process backend also sets
FALRT_PARENT_PID and the docker backend FALRT_RECONNECT_S; a TLS server the FALRT_TLS_*
variables (`falrt.tls`). No backend sets
FALRT_HEARTBEAT_S or FALRT_SYNC_HANDLERS (the process backend drops the server's own FALRT_*
variables), so they keep their defaults unless the shim is started by hand.

| Variable                  | Meaning                                             | Default     |
|---------------------------|-----------------------------------------------------|-------------|
| FALRT_SERVER              | host:port of the server's RunnerLink service, or    | required    |
|                           | stream:HOST:PORT / stream:unix:PATH: a stream link  |             |
| FALRT_RUNNER_ID           | this runner's id (sent in Hello)                    | required    |
| FALRT_RUNNER_TOKEN        | this runner's token (sent in Hello)                 | required    |
| FALRT_ENTRYPOINT          | "module:Class", module = a .py file in the bundle   | required    |
| FALRT_BUNDLE_DIR          | absolute path of the extracted bundle               | the cwd     |
| FALRT_MAX_MULTIPLEXING    | requests served at once (slots), >= 1               | 1           |
| FALRT_GRACE_PERIOD_S      | seconds in-flight requests get after SIGTERM/Drain  | 5           |
| FALRT_HEARTBEAT_S         | seconds between heartbeats                          | 5           |
| FALRT_SYNC_HANDLERS       | where sync handlers run: "thread", "loop", "auto"   | auto        |
| FALRT_PARENT_PID          | die with this process (Linux; process backend)      | unset       |
| FALRT_RECONNECT_S         | seconds to keep dialling after the stream is lost   | 0 (exit)    |
| FALRT_PAYLOAD_REF_BYTES   | an output over this goes by reference (0: never)    | 1048576     |
| FALRT_PAYLOAD_EXPIRY_S    | seconds such an output's file is kept (0: server's) | 0           |
| FALRT_FILES_LOCAL         | "1": on the server's host, files move through its   | unset: gRPC |
|                           | local store's directory (process backend)           |             |
| FALRT_TLS_ROOTS_PEM       | PEM roots to verify the server with: dial over TLS  | unset: plain|
| FALRT_TLS_CERT_PEM        | PEM client certificate, for a mutual-TLS server     | unset       |
| FALRT_TLS_KEY_PEM         | its private key (the runner's, never the server's)  | unset       |
| FALRT_TLS_SERVER_NAME     | the name expected in the server's certificate       | the host    |

"auto" runs sync handlers in the worker pool (see `falrt.shim.invoke` for why).

The rest of the shim touches the environment in three places only: `shim/gpu_stats.py`
reads CUDA_VISIBLE_DEVICES (the UUIDs of the runner's GPUs, for heartbeat figures),
`shim/main.py` and `shim/session.py` set FALRT_RUNNER_STATE (SETUP, RUNNING, TERMINATING)
for the app's code to read, and on a TLS server `shim/main.py` sets FALRT_TLS_CA (and
FALRT_TLS_CLIENT_CERT/KEY) to files holding the PEM above, for `falrt.client` in the app's
code (which dials FALRT_HOST with the runner's FALRT_KEY; docs/security.md, "Runner
keys"). The app's secrets, FALRT_APP_NAME, FALRT_ENV, FALRT_KEY and FALRT_HOST are in the
environment for the app; the shim does not read them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

import msgspec

from falrt.limits import PAYLOAD_REF_BYTES
from falrt.streamlink import PREFIX as STREAM_PREFIX

__all__ = ["SettingsError", "ShimSettings"]

SyncMode = Literal["thread", "loop", "auto"]
LinkKind = Literal["grpc", "stream"]
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SettingsError(ValueError):
    """A FALRT_* variable is missing or malformed."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _slots(env: Mapping[str, str]) -> int:
    raw = env.get("FALRT_MAX_MULTIPLEXING", "") or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"FALRT_MAX_MULTIPLEXING must be an integer >= 1, got {raw!r}")
    return int(raw)


def _parent_pid(env: Mapping[str, str]) -> int | None:
    raw = env.get("FALRT_PARENT_PID", "")
    if not raw:
        return None
    if not raw.isdigit():
        raise SettingsError(f"FALRT_PARENT_PID must be a process id, got {raw!r}")
    return int(raw)


def _sync_mode(env: Mapping[str, str]) -> SyncMode:
    raw = env.get("FALRT_SYNC_HANDLERS", "") or "auto"
    if raw in ("thread", "loop", "auto"):
        return cast(SyncMode, raw)
    raise SettingsError(f"FALRT_SYNC_HANDLERS must be thread, loop or auto, got {raw!r}")


class LinkTls(msgspec.Struct, frozen=True):
    """How the runner dials a TLS server: the roots it verifies the server with and, for
    mutual TLS, its own certificate and key (PEM text)."""

    roots: str
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def __repr__(self) -> str:  # never the key
        return f"LinkTls(server_name={self.server_name!r}, client_cert={bool(self.cert)})"


def _tls(env: Mapping[str, str]) -> LinkTls | None:
    roots = env.get("FALRT_TLS_ROOTS_PEM", "")
    cert, key = env.get("FALRT_TLS_CERT_PEM", ""), env.get("FALRT_TLS_KEY_PEM", "")
    if not roots:
        if cert or key:
            raise SettingsError("FALRT_TLS_CERT_PEM needs FALRT_TLS_ROOTS_PEM")
        return None
    if bool(cert) != bool(key):
        raise SettingsError("FALRT_TLS_CERT_PEM and FALRT_TLS_KEY_PEM go together")
    return LinkTls(roots, cert, key, env.get("FALRT_TLS_SERVER_NAME", ""))


class ShimSettings(msgspec.Struct, frozen=True):
    """Everything the shim is configured with."""

    server: str
    runner_id: str
    token: str
    entrypoint: str
    bundle_dir: Path
    max_multiplexing: int = 1
    grace_period_s: float = 5.0
    heartbeat_s: float = 5.0
    sync_handlers: SyncMode = "auto"
    parent_pid: int | None = None
    # After a welcomed stream is lost: dial again for this long (the server restarted and
    # adopts its runners) instead of exiting. 0: exit at once (the process backend).
    reconnect_s: float = 0.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # An output over this many bytes goes by file reference (shim/payloads.py; 0: never).
    payload_ref_bytes: int = PAYLOAD_REF_BYTES
    # Seconds such an output's file is kept (the server's result retention; 0: its default).
    payload_expiry_s: int = 0
    # Files and payloads by reference move through the server's local store on this host
    # (FALRT_FILES_LOCAL; shim/files.py), not over gRPC.
    files_local: bool = False
    tls: LinkTls | None = None  # None: a plaintext link
    # "stream": the server's stream link (falrt/streamlink.py; FALRT_SERVER's "stream:"),
    # never over TLS; "grpc": the RunnerLink service.
    link: LinkKind = "grpc"

    @classmethod
    def from_environ(cls, env: Mapping[str, str] = os.environ) -> ShimSettings:
        """Reads the FALRT_* variables. Raises SettingsError naming the bad variable."""
        entrypoint = _required(env, "FALRT_ENTRYPOINT")
        if entrypoint.count(":") != 1 or entrypoint.startswith(":"):
            raise SettingsError(f"FALRT_ENTRYPOINT must be module:Class, got {entrypoint!r}")
        server = _required(env, "FALRT_SERVER")
        stream = server.startswith(STREAM_PREFIX)
        return cls(
            server=server.removeprefix(STREAM_PREFIX),
            link="stream" if stream else "grpc",
            runner_id=_required(env, "FALRT_RUNNER_ID"),
            token=_required(env, "FALRT_RUNNER_TOKEN"),
            entrypoint=entrypoint,
            parent_pid=_parent_pid(env),
            bundle_dir=Path(env.get("FALRT_BUNDLE_DIR") or os.getcwd()).resolve(),
            max_multiplexing=_slots(env),
            grace_period_s=_number(env, "FALRT_GRACE_PERIOD_S", 5.0, 0.0),
            heartbeat_s=_number(env, "FALRT_HEARTBEAT_S", 5.0, 0.01),
            sync_handlers=_sync_mode(env),
            reconnect_s=_number(env, "FALRT_RECONNECT_S", 0.0, 0.0),
            payload_ref_bytes=int(_number(
                env, "FALRT_PAYLOAD_REF_BYTES", PAYLOAD_REF_BYTES, 0.0)),
            payload_expiry_s=int(_number(env, "FALRT_PAYLOAD_EXPIRY_S", 0, 0.0)),
            files_local=env.get("FALRT_FILES_LOCAL", "") == "1",
            tls=_tls(env),
        )
