"""The Python client of falrt: call deployed apps through the queue or directly.

`SyncClient` blocks; `AsyncClient` is its asyncio twin. Both raise falrt exceptions
(`falrt.errors`) for every failure. `ControlClient` is the small control-plane client the CLI
uses.
"""

from falrt.client.aio import AsyncClient, AsyncRequestHandle
from falrt.client.control import ControlClient
from falrt.client.endpoint import split_endpoint_ref
from falrt.client.messages import QueueOptions
from falrt.client.status import (
    Completed,
    InProgress,
    LogLine,
    Queued,
    RequestError,
    Status,
)
from falrt.client.sync import RequestHandle, SyncClient

__all__ = [
    "AsyncClient",
    "AsyncRequestHandle",
    "Completed",
    "ControlClient",
    "InProgress",
    "LogLine",
    "QueueOptions",
    "Queued",
    "RequestError",
    "RequestHandle",
    "Status",
    "SyncClient",
    "split_endpoint_ref",
]
