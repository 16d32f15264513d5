"""API keys on the client side: which key a call to a server sends.

A key belongs to one server. A call sends `authorization: Key key_id:secret` only when a key
is known for its server: the one given explicitly (the clients' `key=` argument, else
`$FALRT_KEY`), else the credentials file's entry for the server's address. A server with no
entry gets no key: there is no default key sent to every host. Addresses are compared in
their normal form (`normalise`): `https://Host:443`, `host:443` and `host` are one server,
and so are the loopback names `localhost`, `127.0.0.1` and `[::1]` on the same port.

Entries are written by `falrt server` (its first-start admin key, for the address its own
runners dial) and by `falrt login` (a key read from standard input). The file is
`$FALRT_CREDENTIALS`, else `$XDG_CONFIG_HOME/falrt/credentials.json` (by default
`~/.config/falrt/credentials.json`), mode 0600:

    {"servers": {"127.0.0.1:50051": "k-...:..."}}

A `default` entry written by older versions is never sent, and is dropped at the next write.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

KEY_ENV = "FALRT_KEY"
FILE_ENV = "FALRT_CREDENTIALS"
METADATA_KEY = "authorization"
DEFAULT_PORT = "443"  # gRPC's, for a target that names none
LOOPBACK = "127.0.0.1"
SCHEMES = ("https://", "http://", "grpcs://", "grpc://", "dns:///")


def credentials_path() -> Path:
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "falrt" / "credentials.json"


def strip_scheme(address: str) -> str:
    """`address` without its scheme (`https://`, ...) and trailing slash: what gRPC dials."""
    rest = address.strip()
    for scheme in SCHEMES:
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme):]
            break
    return rest.rstrip("/")


def split_address(address: str) -> tuple[str, str]:
    """(host, port) of `address` with any scheme dropped; an IPv6 host without its
    brackets; the port "" when none is given."""
    rest = strip_scheme(address)
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        return host, tail.removeprefix(":")
    if rest.count(":") > 1:  # a bare IPv6 address
        return rest, ""
    host, _, port = rest.partition(":")
    return host, port


def normalise(address: str) -> str:
    """The form an address is recorded under: `host:port`, host lower-cased without a
    trailing dot, port 443 when none is given, an IPv6 host in brackets, the usual loopback
    names (`localhost`, 127.0.0.1, ::1) as 127.0.0.1."""
    host, port = split_address(address)
    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if host == "localhost" or (ip is not None and ip.compressed in (LOOPBACK, "::1")):
        host = LOOPBACK
    elif ip is not None and ip.version == 6:
        host = f"[{ip.compressed}]"
    return f"{host}:{port or DEFAULT_PORT}"


def is_local(address: str) -> bool:
    """Whether `address` names this machine by a loopback name or address (where gRPC
    sends call credentials over plaintext), or is a Unix socket."""
    if address.startswith("unix:"):
        return True
    host = split_address(address)[0].lower().rstrip(".")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def recorded_key(address: str) -> str | None:
    """The key the credentials file records for `address`, or None."""
    servers = _read(credentials_path()).get("servers", {})
    if not isinstance(servers, dict):
        return None
    wanted = normalise(address)
    for recorded, key in servers.items():
        if isinstance(recorded, str) and normalise(recorded) == wanted:
            return key if isinstance(key, str) and key else None
    return None


def key_for(address: str, explicit: str | None = None) -> str | None:
    """The key calls to `address` send: `explicit`, else `$FALRT_KEY`, else the one recorded
    for the address; None when none is known (no key is sent)."""
    if explicit:
        return explicit.strip()
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    return recorded_key(address)


def metadata_for(address: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the key for `address` (empty without one). For
    callers that build their own plaintext channel to a local server; the clients send keys
    as call credentials (`falrt.client.connection`)."""
    key = key_for(address)
    return ((METADATA_KEY, f"Key {key}"),) if key else ()


def save(address: str, key: str) -> Path:
    """Records `key` for `address` (normalised), atomically, mode 0600; returns the file."""
    return _update(lambda servers: servers.__setitem__(normalise(address), key))


def forget(address: str) -> bool:
    """Removes the key recorded for `address`; whether there was one."""
    wanted = normalise(address)
    found: list[str] = []

    def drop(servers: dict[str, Any]) -> None:
        found.extend(name for name in list(servers) if normalise(name) == wanted)
        for name in found:
            del servers[name]

    _update(drop)
    return bool(found)


def _update(change: Callable[[dict[str, Any]], None]) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _read(path)
        data.pop("default", None)  # never sent any more: a key belongs to its server
        servers = data.get("servers")
        data["servers"] = servers = servers if isinstance(servers, dict) else {}
        change(servers)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `path`'s `.lock` file: writers wait for each other."""
    with open(path.with_suffix(".lock"), "w") as lock:
        _lock(lock.fileno())
        try:
            yield
        finally:
            _unlock(lock.fileno())


# The lock modules are imported where they are used, not at the top, so that importing
# falrt.client needs no POSIX-only module: `fcntl` on POSIX, `msvcrt` on Windows.
if sys.platform == "win32":

    def _lock(fd: int) -> None:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises OSError

    def _unlock(fd: int) -> None:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:

    def _lock(fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
