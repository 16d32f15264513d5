"""Signed webhooks, as fal's: the payload, the Ed25519 signature, and background delivery.

When a request that named a webhook URL completes, the scheduler calls
`WebhookSender.submit(url, request_id, outcome)`; the call returns at once and the sender POSTs
the result in the background (15 s per attempt, at most 10 attempts with exponential backoff
between them). The body is fal's JSON payload (`webhook_body`); the headers carry fal's signature
(`SigningKey.sign_headers`), which a receiver checks with `verify` and a public key from
`Control.GetWebhookKeys`. The signing key lives in the server's data directory (`KEY_FILE`),
created on first start. docs/webhooks.md is the receiver's guide.

Deliveries live in memory only: those still pending when the server stops are lost (logged).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from falrt import errors
from falrt.store.records import ErrorRecord, Outcome

log = logging.getLogger(__name__)

KEY_FILE = "webhook_ed25519.pem"
REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
MAX_URL_LENGTH = 2048
PAYLOAD_NOT_JSON = (
    "Response payload is not JSON serializable. Either return a JSON serializable object or use"
    " the queue endpoint to retrieve the response."
)


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
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def webhook_body(request_id: str, outcome: Outcome, gateway_request_id: str = "") -> bytes:
    """fal's webhook payload for a completed request, as JSON bytes.

    OK: `payload` is the output exactly as the runner produced it (JSON output is embedded
    without being re-encoded); output that is not JSON (msgpack, or malformed) gives
    `payload: null` and `payload_error`. ERROR: `error` and `error_type` at the top, and
    `payload: {"detail", "error_type"}` (detail: the message, or a list of `{loc, msg}` for a
    validation failure). `gateway_request_id` defaults to `request_id`.
    """
    fields: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": gateway_request_id or request_id,
    }
    if outcome.error is not None:
        fields.update(_error_fields(outcome.error))
    else:
        fields.update(_output_fields(outcome))
    return msgspec.json.encode(fields)


def _output_fields(outcome: Outcome) -> dict[str, Any]:
    raw = _json_output(outcome)
    if raw is None:
        return {"status": "OK", "payload": None, "payload_error": PAYLOAD_NOT_JSON}
    return {"status": "OK", "payload": raw}


def _json_output(outcome: Outcome) -> msgspec.Raw | None:
    """The output as a raw JSON value (validated, not re-encoded), or None if it is not JSON."""
    media_type = outcome.content_type.partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        return None
    try:
        return msgspec.json.decode(outcome.output, type=msgspec.Raw)
    except msgspec.DecodeError:
        return None


def _error_fields(error: ErrorRecord) -> dict[str, Any]:
    detail: Any = error.message
    if error.field_errors:
        detail = [{"loc": loc, "msg": msg} for loc, msg in error.field_errors]
    return {
        "status": "ERROR",
        "error": error.message,
        "error_type": error.error_type,
        "payload": {"detail": detail, "error_type": error.error_type},
    }


def check_webhook_url(url: str) -> str:
    """Returns `url` unchanged if it can be a webhook target: an absolute http or https URL
    with a host, at most MAX_URL_LENGTH characters, no whitespace or control characters.
    Raises InvalidArgumentError otherwise (the message does not repeat the URL)."""
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidArgumentError(f"webhook_url is longer than {MAX_URL_LENGTH} chars")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise errors.InvalidArgumentError("webhook_url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise errors.InvalidArgumentError(f"webhook_url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise errors.InvalidArgumentError("webhook_url must be an http:// or https:// URL")
    if not parts.hostname:
        raise errors.InvalidArgumentError("webhook_url has no host")
    return url


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment, which may hold secrets: for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


class DeliverySettings(msgspec.Struct, frozen=True):
    """How webhooks are delivered. The defaults are fal's: 15 s per attempt, 10 attempts, the
    retries spread over about 2 hours (15 s, 30 s, ... doubling, each at most `backoff_cap_s`).
    """

    timeout_s: float = 15.0
    max_attempts: int = 10
    backoff_base_s: float = 15.0
    backoff_cap_s: float = 3600.0
    # Attempts (HTTP POSTs) at once; more wait for a free slot.
    max_in_flight: int = 64
    # Deliveries held (in flight, waiting for a slot or for a retry); past either bound a new
    # one is dropped with a logged error.
    max_pending: int = 10_000
    max_pending_bytes: int = 256 * 1024 * 1024


def backoff_s(failed_attempts: int, settings: DeliverySettings) -> float:
    """The wait after the `failed_attempts`-th failed attempt: base * 2^(n-1), at most cap."""
    return min(settings.backoff_cap_s, settings.backoff_base_s * 2.0 ** (failed_attempts - 1))


class WebhookStats(msgspec.Struct, frozen=True):
    """Counts since the sender started. `pending`: deliveries not finished yet."""

    pending: int
    delivered: int
    abandoned: int
    dropped: int


class WebhookSender:
    """Delivers signed webhooks in the background.

    Loop-affine: create it, call `submit`, `join` and `close` on one event loop. `submit` never
    blocks and never raises for a delivery problem; every failure is logged (URLs without
    credentials or query, never keys or bodies). Each delivery is a task of this sender, so
    `close` ends them all.
    """

    def __init__(
        self,
        key: SigningKey,
        user_id: str,
        settings: DeliverySettings = DeliverySettings(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self._user_id = user_id
        self._settings = settings
        self._clock = clock
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_s, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=settings.max_in_flight),
            headers={"User-Agent": "falrt-webhooks"},
        )
        self._tasks: dict[asyncio.Task[None], int] = {}
        self._pending_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._delivered = self._abandoned = self._dropped = 0

    def submit(
        self, url: str, request_id: str, outcome: Outcome, *, gateway_request_id: str = "",
        on_finished: Callable[[], None] | None = None,
    ) -> bool:
        """Starts delivering `outcome` of `request_id` to `url` and returns at once.

        True if the delivery was taken; False if it was dropped (sender closed, bounds full, or
        a URL that fails `check_webhook_url`), which is logged. Call it on the sender's loop.
        `on_finished()` runs once the delivery succeeded or was given up after its last
        attempt (not when `close` cancels it: it is still owed).
        """
        size = len(outcome.output) + 1024
        reason = self._refusal(url, size)
        if reason:
            self._dropped += 1
            log.error("webhook for %s dropped: %s", request_id, reason)
            return False
        task = asyncio.get_running_loop().create_task(
            self._deliver(url, request_id, outcome, gateway_request_id, on_finished),
            name=f"webhook {request_id}",
        )
        self._tasks[task] = size
        self._pending_bytes += size
        self._idle.clear()
        task.add_done_callback(self._forget)
        return True

    def _refusal(self, url: str, size: int) -> str:
        if self._closed:
            return "the sender is closed"
        if len(self._tasks) >= self._settings.max_pending:
            return f"{len(self._tasks)} deliveries already pending"
        if self._pending_bytes + size > self._settings.max_pending_bytes:
            return f"{self._pending_bytes} bytes of deliveries already pending"
        try:
            check_webhook_url(url)
        except errors.InvalidArgumentError as exc:
            return exc.message
        return ""

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._pending_bytes -= self._tasks.pop(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook task %s failed", task.get_name(), exc_info=task.exception())

    def stats(self) -> WebhookStats:
        return WebhookStats(len(self._tasks), self._delivered, self._abandoned, self._dropped)

    async def join(self) -> None:
        """Returns once no delivery is pending (each delivered, abandoned or cancelled)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stops taking deliveries, cancels every pending one (in flight or waiting to retry),
        waits for them to end, and closes the HTTP client. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        if tasks:
            log.warning("closing with %d webhooks undelivered", len(tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def _deliver(
        self, url: str, request_id: str, outcome: Outcome, gateway_request_id: str,
        on_finished: Callable[[], None] | None,
    ) -> None:
        await self._try_all(url, request_id, webhook_body(request_id, outcome, gateway_request_id))
        if on_finished is not None:
            on_finished()

    async def _try_all(self, url: str, request_id: str, body: bytes) -> None:
        attempts = self._settings.max_attempts
        for attempt in range(1, attempts + 1):
            problem = await self._attempt(url, request_id, body)
            if problem is None:
                self._delivered += 1
                return
            if attempt == attempts:
                break
            delay = backoff_s(attempt, self._settings)
            log.warning("webhook for %s to %s failed (attempt %d of %d: %s); retry in %.3g s",
                        request_id, redact_url(url), attempt, attempts, problem, delay)
            await asyncio.sleep(delay)
        self._abandoned += 1
        log.error("webhook for %s to %s abandoned after %d attempts: %s",
                  request_id, redact_url(url), attempts, problem)

    async def _attempt(self, url: str, request_id: str, body: bytes) -> str | None:
        """One signed POST within `timeout_s`: None on a 2xx answer, else what went wrong.
        The answer's body is never read."""
        async with self._slots:
            headers = self.key.sign_headers(request_id, self._user_id, body, self._clock())
            headers["Content-Type"] = "application/json"
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    async with self._client.stream(
                        "POST", url, content=body, headers=headers
                    ) as response:
                        status = response.status_code
            except TimeoutError:
                return f"no answer within {self._settings.timeout_s} s"
            except httpx.HTTPError as exc:
                return type(exc).__name__
        return None if 200 <= status < 300 else f"answered {status}"
