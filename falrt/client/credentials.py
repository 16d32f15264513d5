"""API keys on the client side: which key a call to a server sends.

A call sends `authorization: Key key_id:secret` when a key is known for its server:
`$FALRT_KEY` if set, else the credentials file's entry for the server's address, else the
file's default (the admin key the latest server wrote on its first start). The file is
`$FALRT_CREDENTIALS`, else `$XDG_CONFIG_HOME/falrt/credentials.json` (by default
`~/.config/falrt/credentials.json`), mode 0600:

    {"servers": {"127.0.0.1:50051": "k-...:..."}, "default": "k-...:..."}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KEY_ENV = "FALRT_KEY"
FILE_ENV = "FALRT_CREDENTIALS"
METADATA_KEY = "authorization"


def credentials_path() -> Path:
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "falrt" / "credentials.json"


def key_for(host: str) -> str | None:
    """The key calls to `host` send, or None."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    data = _read(credentials_path())
    servers = data.get("servers", {})
    key = servers.get(host) or data.get("default")
    return key if isinstance(key, str) and key else None


def metadata_for(host: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the key for `host` (empty without one)."""
    key = key_for(host)
    return ((METADATA_KEY, f"Key {key}"),) if key else ()


def save(host: str, key: str, *, default: bool = True) -> Path:
    """Records `key` for `host` (and as the default), atomically, mode 0600."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _read(path)
        data.setdefault("servers", {})[host] = key
        if default:
            data["default"] = key
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
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
