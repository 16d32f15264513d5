"""API keys: `key_id:secret`, of which the server keeps only the SHA-256 of the secret.

A key is sent as gRPC metadata `authorization: Key key_id:secret`. Scopes: ADMIN (the
control plane and every app) and API (calling apps).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from falrt.store.records import KeyRecord
from falrt.vocabulary import KeyScope


def new_key(scope: KeyScope, owner: str, description: str) -> tuple[KeyRecord, str]:
    """A new key record (to store) and the key itself (to show once)."""
    key_id = f"k-{secrets.token_hex(8)}"
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(key_id=key_id, secret_hash=_hash(secret), scope=scope, owner=owner,
                       description=description, created_at=time.time())
    return record, f"{key_id}:{secret}"


def parse(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a `key_id:secret` string, or None when malformed."""
    key_id, sep, secret = key.strip().partition(":")
    return (key_id, secret) if sep and key_id and secret else None


def matches(record: KeyRecord, secret: str) -> bool:
    return hmac.compare_digest(record.secret_hash, _hash(secret))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
