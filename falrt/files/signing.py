"""Signed file URLs: `GET /files/{id}?expires=UNIX&signature=HEX` downloads without a key.

The signature is the hex HMAC-SHA256, with the server's URL key, of `"{file_id}\\n{expires}"`
(`expires`: whole seconds since the epoch, in decimal). The key is 32 random bytes made on
the server's first start in its data directory (`KEY_FILE`, mode 0600, written to a
temporary file, fsynced, then linked into place: two processes racing keep the first), as
the webhook key is (`falrt.webhook_signatures`). Deleting the file revokes every URL at the
next start; servers sharing a PostgreSQL store share their data directory's key or their
URLs only verify on the server that made them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from falrt import errors

KEY_FILE = "files_url.key"
KEY_BYTES = 32


class UrlSigner:
    """Signs and checks file URLs. Immutable; safe to share between threads. The key is never
    logged or repr'd."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a URL key has at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "UrlSigner(...)"

    @classmethod
    def load_or_create(cls, path: Path) -> UrlSigner:
        """The key at `path` (hex), made first when there is none. Blocking."""
        if not path.exists():
            _write_new_key(path)
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except ValueError as exc:
            raise errors.InternalError(f"{path} does not hold a hex URL key: {exc}") from None

    def sign(self, file_id: str, expires: int) -> str:
        message = f"{file_id}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, file_id: str, expires: int) -> str:
        """The query string of a signed URL (without the "?")."""
        return f"expires={expires}&signature={self.sign(file_id, expires)}"

    def check(self, file_id: str, expires: str, signature: str, now: float) -> None:
        """Passes a URL signed for `file_id` that has not expired at `now`; raises
        PermissionDeniedError (HTTP 403) otherwise: an altered id, expiry or signature, or
        an expiry in the past. The comparison is constant-time."""
        if not expires.isdigit() or len(expires) > 12:
            raise errors.PermissionDeniedError("the URL's `expires` is not a unix time")
        if not hmac.compare_digest(self.sign(file_id, int(expires)), signature.lower()):
            raise errors.PermissionDeniedError("the URL's signature does not match")
        if int(expires) <= now:
            raise errors.PermissionDeniedError("the URL expired; ask for a new one")


def _write_new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process linked its key first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
