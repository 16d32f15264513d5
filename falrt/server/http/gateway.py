"""What every HTTP route needs: the planes it calls, who the caller is, where it is served.

Built once in `falrt/server/main.py` and handed to each route module (`queue_api`,
`direct_api`, `realtime`, `openapi`), which read its fields and never build their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from falrt.limits import payload_limit
from falrt.server.api.auth import Authenticator, Caller
from falrt.server.control.apps import AppControl
from falrt.server.files import FilePlane
from falrt.server.http.observe import Observed
from falrt.server.http.ui.dashboard import Dashboard
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import Apps
from falrt.settings import ServerSettings


@dataclass(frozen=True)
class Gateway:
    scheduler: Scheduler
    authenticator: Authenticator
    apps: Apps
    control: AppControl
    settings: ServerSettings
    # The URL callers reach the gateway at, without a trailing slash ("" when not set:
    # then the URLs the gateway returns are made from each request's own scheme and Host).
    public_url: str = ""
    # The dashboard's sources (`/ui`, falrt/server/http/ui/); None: no dashboard is served.
    dashboard: Dashboard | None = None
    # What `/metrics` and `/healthz` read (falrt/server/http/observe.py); None: not served.
    observed: Observed | None = None
    # The file store's rules (`/files`, falrt/server/http/files_api.py); None: not served.
    files: FilePlane | None = None

    async def caller(self, headers: Mapping[str, str]) -> Caller | None:
        """The caller an HTTP request's `Authorization: Key KEY_ID:SECRET` names (None
        without one); raises UnauthenticatedError for a bad key, as the gRPC edge does."""
        value = headers.get("authorization")
        return await self.authenticator.caller([("authorization", value)] if value else ())

    @property
    def payload_limit(self) -> int:
        """The largest input a call may carry (falrt/limits.py), as the gRPC edge's."""
        return payload_limit(self.settings.max_message_bytes)
