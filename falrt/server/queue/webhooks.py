"""Signed webhooks, as fal's: the payload, the Ed25519 signature, and background delivery.

When a request that named a webhook URL completes, the scheduler calls
`WebhookSender.submit(url, request_id, outcome)`; the call returns at once and the sender POSTs
the result in the background (15 s per attempt, at most 10 attempts with exponential backoff
between them). The body is fal's JSON payload (`webhook_body`); the headers carry fal's signature
(`SigningKey.sign_headers`), which a receiver checks with `verify` and a public key from
`Control.GetWebhookKeys`. The signing key lives in the server's data directory (`KEY_FILE`),
created on first start. docs/webhooks.md is the receiver's guide.

The store keeps a delivery owed until it ends, so a restarted server sends it again (see
`Recorder.resend_webhooks`). Signing and verifying live in `falrt.webhook_signatures`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from falrt import errors
from falrt.files import refs
from falrt.server.queue.webhook_targets import TargetPolicy
from falrt.store.records import ErrorRecord, Outcome
from falrt.webhook_signatures import (
    KEY_FILE,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    USER_ID_HEADER,
    SigningKey,
    signature_message,
    verify,
)

log = logging.getLogger(__name__)
__all__ = [
    "KEY_FILE", "REQUEST_ID_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "USER_ID_HEADER",
    "DeliverySettings", "SigningKey", "WebhookSender", "check_webhook_url", "signature_message",
    "verify", "webhook_body",
]

MAX_URL_LENGTH = 2048
PAYLOAD_BY_REFERENCE = (
    "The response payload has {size} bytes and is kept by reference: fetch payload_url, or "
    "use the queue endpoint to retrieve the response.")
PAYLOAD_NOT_JSON = (
    "Response payload is not JSON serializable. Either return a JSON serializable object or use"
    " the queue endpoint to retrieve the response."
)


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
    if refs.is_ref(outcome.content_type):  # (too large for a webhook body: its URL instead)
        ref = refs.unpack(outcome.output)
        return {"status": "OK", "payload": None, "payload_url": ref.url,
                "payload_error": PAYLOAD_BY_REFERENCE.format(size=ref.size)}
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
    # Networks webhooks may reach although they are not public (falrt/server/queue/
    # webhook_targets.py; `falrt server --webhook-allow`).
    allowed_networks: tuple[str, ...] = ()


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
        self._targets = TargetPolicy(settings.allowed_networks)
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
            try:
                problem = await self._attempt(url, request_id, body)
            except ConnectionRefusedError as refused:  # the address policy: never retried
                self._abandoned += 1
                log.error("webhook for %s to %s refused: %s", request_id, redact_url(url),
                          refused)
                return
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

    async def _pinned(self, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The URL with its host resolved and checked (webhook_targets.py): the POST goes to
        that address, with the name in the Host header and, over TLS, in SNI and the
        certificate check. Raises ConnectionRefusedError for a refused address."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._targets.resolve(host, port)
        userinfo, at, host_port = parts.netloc.rpartition("@")
        shown = f"[{address}]" if address.version == 6 else str(address)
        headers["Host"] = host_port
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        # (credentials in the URL stay: the client sends them as basic auth)
        return parts._replace(netloc=f"{userinfo}{at}{shown}:{port}").geturl(), extensions

    async def _attempt(self, url: str, request_id: str, body: bytes) -> str | None:
        """One signed POST within `timeout_s`: None on a 2xx answer, else what went wrong.
        The answer's body is never read."""
        async with self._slots:
            headers = self.key.sign_headers(request_id, self._user_id, body, self._clock())
            headers["Content-Type"] = "application/json"
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    target, extensions = await self._pinned(url, headers)
                    async with self._client.stream(
                        "POST", target, content=body, headers=headers, extensions=extensions
                    ) as response:
                        status = response.status_code
            except TimeoutError:
                return f"no answer within {self._settings.timeout_s} s"
            except httpx.HTTPError as exc:
                return type(exc).__name__
            except ConnectionRefusedError:
                raise
            except OSError as exc:  # the name did not resolve
                return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"answered {status}"
