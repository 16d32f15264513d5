"""Who calls, and what they may do: API keys, the control plane, and each app's auth mode.

A call carries `authorization: Key key_id:secret` (or nothing). The Control and Queue
servicers run a guard (`control_guard`, `queue_guard`) before each method (the `unary` and
`server_stream` wrappers of falrt/server/rpc.py call it; no interceptor, so gRPC's fast path
stays):

- Control (every RPC): an ADMIN key of the server's owner. No key or a bad one:
  UNAUTHENTICATED; an API key or another owner's: PERMISSION_DENIED.
- Queue: the app's auth mode. `public`: anyone; `shared`: any valid key; `private` (the
  default): a key of the app's owner (the server's owner). The app is the one the
  endpoint id names (Submit, Subscribe, Run, Stream, Realtime) or the one the request belongs to
  (Watch, GetStatus, GetResult, Cancel). A call for an app or request that does not exist
  goes on to the servicer, which answers NOT_FOUND. A request whose app was deleted (it stays
  readable for a while) is checked against the auth mode its app had when the request was
  submitted, and as `private` when that is not known: authorization never falls open.
- Request logs (Watch, Subscribe and GetStatus `with_logs`, the HTTP status routes' `logs=1`):
  every caller allowed to read a request gets its logs, unless its app sets `private_logs`
  (fal's): then only keys of the app's owner (the server's owner, API or ADMIN scope) get
  them, and any other caller gets the request without logs. A request whose app was deleted
  shows its logs to the owner's keys only (what the app set is no longer known).
- Files (gRPC and the HTTP `/files` routes): a key of the server's owner, API or ADMIN scope
  (`check_files`); a signed file URL needs none (falrt/files/signing.py).
- RunnerLink is not checked here: a runner proves itself with its own token in Hello
  (`Fleet.attach`). Health and reflection are open.

A key that is malformed, unknown, wrong or revoked is refused (UNAUTHENTICATED) on every
service, public apps included. Key records are cached for `CACHE_S` seconds; a revocation
on this server takes effect at once, on other servers sharing the store within CACHE_S.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from falrt import errors
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import Apps
from falrt.server.state.keys import matches, parse
from falrt.server.state.work import QueuedRequest
from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.records import KeyRecord
from falrt.vocabulary import AppAuth, KeyScope

CACHE_S = 2.0
# "RealtimeOpen": Queue.Realtime checks its first message (RealtimeOpen) once it has it.
_BY_ENDPOINT = frozenset({"Submit", "Run", "Stream", "RealtimeOpen"})
_BY_SUBMIT = frozenset({"Subscribe"})
_BY_REQUEST = frozenset({"Watch", "GetStatus", "GetResult", "Cancel"})
HINT = ("send `authorization: Key KEY_ID:SECRET` (the CLI and the Python client send "
        "$FALRT_KEY, else the key recorded for this server's address by `falrt login` or the "
        "server's first start, and no key to a plaintext address of another machine; "
        "`falrt keys create` makes keys)")


@dataclass(frozen=True)
class Caller:
    key_id: str
    scope: str
    owner: str


class Authenticator:
    """Turns call metadata into a Caller (None: no key). Loop-affine."""

    def __init__(
        self, store: Store, apps: Apps, scheduler: Scheduler, settings: ServerSettings
    ) -> None:
        self._store = store
        self._apps = apps
        self._scheduler = scheduler
        self._owner = settings.owner
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        # Per key id, the secret last checked against its record, with its Caller, until
        # the record's cache entry expires: a key used again costs one constant-time
        # comparison instead of a SHA-256.
        self._verified: dict[str, tuple[bytes, Caller, float]] = {}

    async def caller(self, metadata: Any) -> Caller | None:
        value = None
        for name, header in metadata or ():
            if name == "authorization":
                value = header
                break
        if value is None:
            return None
        scheme, _, key = str(value).partition(" ")
        parsed = parse(key) if scheme.lower() == "key" else None
        if parsed is None:
            raise errors.UnauthenticatedError(
                "the authorization metadata must be `Key KEY_ID:SECRET`")
        key_id, secret = parsed
        given = secret.encode()
        verified = self._verified.get(key_id)
        if (verified is not None and verified[2] > time.monotonic()
                and hmac.compare_digest(verified[0], given)):
            return verified[1]
        record, expires = await self._record(key_id)
        if record is None or not matches(record, secret):
            raise errors.UnauthenticatedError(f"unknown key or wrong secret ({key_id})")
        if record.revoked_at is not None:
            raise errors.UnauthenticatedError(f"key {key_id} was revoked")
        caller = Caller(record.key_id, record.scope, record.owner)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key_id] = (given, caller, expires)
        return caller

    def forget(self, key_id: str) -> None:
        """Drops a cached key (it was revoked here)."""
        self._cache.pop(key_id, None)
        self._verified.pop(key_id, None)

    async def _record(self, key_id: str) -> tuple[KeyRecord | None, float]:
        """The key's record (None: no such key) and until when it is cached."""
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached
        record = await self._store.get_key(key_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = cached = (record, now + CACHE_S)
        return cached

    # -- authorization ---------------------------------------------------------------

    def check_admin(self, caller: Caller | None) -> None:
        if caller is None:
            raise errors.UnauthenticatedError(f"the control plane needs an ADMIN key: {HINT}")
        if caller.scope != KeyScope.ADMIN:
            raise errors.PermissionDeniedError(
                f"key {caller.key_id} has the {caller.scope} scope: it may call apps, not use "
                "the control plane (that needs an ADMIN key)")
        self._check_owner(caller)

    def check_files(self, caller: Caller | None) -> str:
        """The file store's callers (docs/files.md): a key of the server's owner, API or ADMIN
        scope; returns the owner files are kept for."""
        if caller is None:
            raise errors.UnauthenticatedError(f"the file store needs a key: {HINT}")
        self._check_owner(caller)
        return caller.owner

    def check_app(self, caller: Caller | None, app_name: str) -> None:
        """An app's callers (an app that does not exist is the servicer's NOT_FOUND)."""
        app = self._apps.get(app_name)
        if app is not None:
            self._check_mode(caller, app_name, app.record.auth)

    def check_request(self, caller: Caller | None, item: QueuedRequest) -> None:
        """Who may read or cancel a request: its app's callers; once the app is gone, those
        of the auth mode the request remembers (private when it remembers none)."""
        app = self._apps.get(item.app_name)
        mode = app.record.auth if app is not None else item.auth or AppAuth.PRIVATE
        self._check_mode(caller, item.app_name, mode)

    def sees_logs(self, caller: Caller | None, item: QueuedRequest) -> bool:
        """Whether a caller allowed to read `item` also gets its request logs (the rule is
        in the module's docstring)."""
        if caller is not None and caller.owner == self._owner:
            return True
        app = self._apps.get(item.app_name)
        return app is not None and not app.revision.config.private_logs

    async def queue_sees_logs(self, item: QueuedRequest, context: Any) -> bool:
        """`sees_logs` for the caller of a Queue call (its gRPC context)."""
        return self.sees_logs(await self.caller(context.invocation_metadata()), item)

    def _check_mode(self, caller: Caller | None, app_name: str, mode: str) -> None:
        if mode == AppAuth.PUBLIC:
            return
        if caller is None:
            raise errors.UnauthenticatedError(
                f"app {app_name!r} is {mode}: it needs a key: {HINT}")
        if mode != AppAuth.SHARED:
            self._check_owner(caller)

    def _check_owner(self, caller: Caller) -> None:
        owner = self._owner
        if caller.owner != owner:
            raise errors.PermissionDeniedError(
                f"key {caller.key_id} belongs to {caller.owner!r}, not to {owner!r}")

    @staticmethod
    def app_of(method: str, request: Any) -> str:
        """The app a Queue call names ("" when it names none)."""
        if method in _BY_ENDPOINT:
            return str(request.endpoint_id).partition("/")[2].partition("/")[0]
        if method in _BY_SUBMIT:
            return str(request.submit.endpoint_id).partition("/")[2].partition("/")[0]
        return ""


    # -- the guards the servicers run before each call (falrt/server/rpc.py) ----------

    async def control_guard(self, method: str, request: Any, context: Any) -> None:
        self.check_admin(await self.caller(context.invocation_metadata()))

    async def queue_guard(self, method: str, request: Any, context: Any) -> None:
        caller = await self.caller(context.invocation_metadata())
        if method in _BY_REQUEST:
            item = await self._scheduler.lookup(request.request_id)
            if item is not None:  # (an unknown id is the servicer's NOT_FOUND)
                self.check_request(caller, item)
        elif app_name := self.app_of(method, request):
            self.check_app(caller, app_name)
