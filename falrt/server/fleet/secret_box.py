"""Secrets at rest: encrypted with a server key (Fernet: AES-128-CBC with HMAC-SHA256).

The key is `FALRT_SECRETS_KEY` when set (servers that share a PostgreSQL store must use
the same one), else `<data_dir>/secrets.key`, created on first start with mode 0600. The
store only ever sees ciphertext; plain values exist in the server's memory while a runner
starts, and in that runner's environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from falrt import errors
from falrt.names import is_secret_name

KEY_FILE = "secrets.key"
KEY_ENV = "FALRT_SECRETS_KEY"
MAX_VALUE_BYTES = 64 * 1024


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SecretBox:
        """Blocking (file I/O): call it in a thread. Raises ValueError naming where the key
        came from (never the key) when it is not a Fernet key."""
        if os.environ.get(KEY_ENV):
            return cls._checked(os.environ[KEY_ENV].encode(), KEY_ENV)
        path = data_dir / KEY_FILE
        try:
            return cls._checked(path.read_bytes().strip(), str(path))
        except FileNotFoundError:
            pass
        data_dir.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return cls(key)

    @classmethod
    def _checked(cls, key: bytes, source: str) -> SecretBox:
        try:
            return cls(key)
        except ValueError:
            raise ValueError(
                f"the secrets key in {source} is not valid: it must be 32 url-safe "
                "base64-encoded bytes; make one with: python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())'") from None

    def encrypt(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise errors.InternalError(
                "a stored secret cannot be decrypted with this server's key (was "
                f"{KEY_ENV} or {KEY_FILE} changed?)") from None


def check_secret(name: str, value: str) -> None:
    """Raises InvalidArgumentError naming the secret; never echoes its value."""
    if not is_secret_name(name):
        raise errors.InvalidArgumentError(
            f"invalid secret name {errors.quote(name)}: use letters, digits and underscores, not "
            "starting with a digit (at most 128)")
    if name.startswith("FALRT_"):
        raise errors.InvalidArgumentError(f"secret names may not start with FALRT_ ({name})")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise errors.InvalidArgumentError(
            f"the value of secret {name} is larger than {MAX_VALUE_BYTES} bytes")
