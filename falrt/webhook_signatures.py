"""The webhook signing key and fal's signature: make it, keep it, sign with it, verify.

Shared by the server (which signs) and by receivers (`verify`), as `falrt.errors` is.

The key is Ed25519, created on the server's first start in its data directory (`KEY_FILE`,
mode 0600, written atomically) and loaded on later starts. The signed message is fal's: the
request id, the user id, the unix timestamp and the hex SHA-256 of the body, joined by "\n".
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from falrt import errors
from falrt.durable import fsync_dir

log = logging.getLogger(__name__)

KEY_FILE = "webhook_ed25519.pem"
REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"


class SigningKey:
    """The server's Ed25519 webhook key. Immutable; safe to share between threads and loops.

    `x` is the raw public key, base64url without padding (the JWK `x`); `kid` is the first 16
    hex digits of the SHA-256 of the raw public key. The private key is never logged or repr'd.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.x = _b64url_encode(raw)
        self.kid = hashlib.sha256(raw).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Loads the PEM (PKCS#8) key at `path`, creating it (mode 0600) if there is none.

        Creation is atomic and never replaces an existing file: when two processes race, both
        end up with the key that was linked into place first. Raises InternalError if the file
        holds something other than an unencrypted Ed25519 private key.
        """
        if not path.exists():
            _write_new_key(path)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> SigningKey:
        if path.stat().st_mode & 0o077:
            log.warning("webhook key %s is readable by other users; chmod 600 it", path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise errors.InternalError(f"{path} does not hold a readable private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise errors.InternalError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037), as fal's JWKS lists its keys."""
        return {"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": self.kid}

    def sign_headers(
        self, request_id: str, user_id: str, body: bytes, now: float
    ) -> dict[str, str]:
        """fal's four signature headers for `body`, timestamped `now` (unix seconds)."""
        timestamp = int(now)
        message = signature_message(request_id, user_id, timestamp, body)
        return {
            REQUEST_ID_HEADER: request_id,
            USER_ID_HEADER: user_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: self._private_key.sign(message).hex(),
        }


def _write_new_key(path: Path) -> None:
    """Writes a fresh key to a private temporary file, then links it to `path` unless a key
    appeared there meanwhile. The file is fsynced before it becomes visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process linked its key first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def signature_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    """What is signed: request id, user id, timestamp and hex SHA-256 of the raw body, joined
    by newlines, UTF-8 (fal's message)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, str(timestamp), digest)).encode()


def verify(
    public_key_x: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = 300.0,
) -> bool:
    """True if `headers` carry a valid signature of `body` by the key `public_key_x` (a JWK
    `x`) with a timestamp within `tolerance_s` of `now` (unix seconds).

    Header names are matched case-insensitively. Never raises for bad input: a missing header,
    a malformed key or signature, a stale timestamp or a wrong signature all give False.
    """
    found = {name.lower(): value for name, value in headers.items()}
    try:
        request_id = found[REQUEST_ID_HEADER.lower()]
        user_id = found[USER_ID_HEADER.lower()]
        timestamp = int(found[TIMESTAMP_HEADER.lower()])
        signature = bytes.fromhex(found[SIGNATURE_HEADER.lower()])
        key = Ed25519PublicKey.from_public_bytes(_b64url_decode(public_key_x))
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    try:
        key.verify(signature, signature_message(request_id, user_id, timestamp, body))
    except InvalidSignature:
        return False
    return True


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
