"""The file store over HTTP (docs/files.md): upload with PUT, download with GET.

    PUT /files/{name}     the body is the file (Content-Length required); answers its
                          record with a signed `url`. Expiry: X-Fal-Object-Lifecycle-Preference
                          `{"expiration_duration_seconds": N}`, else the server's default.
    GET /files/{id}       the file's bytes, streamed; one `Range: bytes=` range (206);
                          with `?expires=&signature=` (a signed URL) no key is needed.

Keys are checked as on the gRPC Files service (`Authenticator.check_files`). A body cut short
deletes what it uploaded (over HTTP an upload is not resumed; gRPC's is). Uploads are PUT
only: a POST to `/files/x` is the direct API's call of an app `x` of an owner `files`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from falrt import errors
from falrt.files.base import FileRecord
from falrt.server.files import FILES_PATH, FilePlane
from falrt.server.http.gateway import Gateway

LIFECYCLE_HEADER = "x-fal-object-lifecycle-preference"
SHA256_HEADER = "x-falrt-sha256"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def routes(gateway: Gateway, files: FilePlane) -> list[BaseRoute]:
    api = FilesApi(gateway, files)
    return [Route(FILES_PATH + "/{name}", api.upload, methods=["PUT"]),
            Route(FILES_PATH + "/{file_id}", api.download, methods=["GET", "HEAD"])]


class FilesApi:
    """The handlers; each raises FalrtError for the app's error handler to answer."""

    def __init__(self, gateway: Gateway, files: FilePlane) -> None:
        self._gateway = gateway
        self._files = files

    async def upload(self, request: Request) -> Response:
        owner = self._gateway.authenticator.check_files(
            await self._gateway.caller(request.headers))
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise errors.InvalidArgumentError(
                "an upload needs a Content-Length (the size is checked before the body)")
        new = self._files.new_file(
            owner, request.path_params["name"], request.headers.get("content-type", ""),
            int(declared), request.headers.get(SHA256_HEADER, ""), _expires_in(request))
        record = await self._files.create(new)
        try:
            record = await self._files.upload(record.file_id, 0, _body(request))
            if not record.complete:
                raise errors.InvalidArgumentError(
                    f"the body ended after {record.received} of its {record.size} bytes")
        except BaseException:
            await asyncio.shield(self._files.store.delete(record.file_id))
            raise
        url = self._files.url(record, self._gateway.public_url or _base(request))
        return Response(msgspec.json.encode(document(record, url)),
                        media_type="application/json")

    async def download(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        query = request.query_params
        if "signature" in query:
            self._files.check_signature(file_id, query.get("expires", ""), query["signature"])
        else:
            self._gateway.authenticator.check_files(
            await self._gateway.caller(request.headers))
        record = await self._files.complete(file_id)
        start, end, partial = _range(request.headers.get("range"), record.size)
        headers = {
            "content-length": str(end - start), "accept-ranges": "bytes",
            "etag": f'"{record.sha256}"', "cache-control": "private",
            "content-disposition": "inline; filename*=UTF-8''" + quote(record.name, safe=""),
            # An uploaded page must not run as the gateway's origin (the dashboard's):
            # it is shown sandboxed, and its type is never sniffed.
            "content-security-policy": "sandbox", "x-content-type-options": "nosniff",
        }
        if partial:
            headers["content-range"] = f"bytes {start}-{end - 1}/{record.size}"
        status = 206 if partial else 200
        if request.method == "HEAD":
            return Response(b"", status, headers=headers, media_type=record.content_type)
        chunks = self._files.read(record, start, end)
        return StreamingResponse(chunks, status, headers=headers,
                                 media_type=record.content_type)


def document(record: FileRecord, url: str) -> dict[str, object]:
    """A complete file as the HTTP API answers it (fal's File fields, and falrt's)."""
    return {
        "file_id": record.file_id, "url": url, "file_name": record.name,
        "file_size": record.size, "content_type": record.content_type,
        "sha256": record.sha256, "created_at": record.created_at,
        "expires_at": record.expires_at,
    }


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def _expires_in(request: Request) -> float:
    """Seconds from X-Fal-Object-Lifecycle-Preference (0: the server's default)."""
    value = request.headers.get(LIFECYCLE_HEADER)
    if value is None:
        return 0.0
    try:
        seconds = json.loads(value)["expiration_duration_seconds"]
    except (ValueError, KeyError, TypeError):
        seconds = None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
        raise errors.InvalidArgumentError(
            f"{LIFECYCLE_HEADER} is {{\"expiration_duration_seconds\": N}} with N > 0, not "
            f"{errors.quote(value)}")
    return float(seconds)


def _range(value: str | None, size: int) -> tuple[int, int, bool]:
    """(start, end, partial) of a `Range` header over `size` bytes: one range of bytes
    (`a-b`, `a-`, `-n`); another form is ignored (the whole file, as RFC 9110 allows).
    OutOfRangeError (416) for a range outside the file."""
    match = _RANGE.fullmatch(value.strip()) if value else None
    if match is None or match.group(0) == "bytes=-":
        return 0, size, False
    first, last = match.groups()
    if not first:  # the last `last` bytes
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise errors.OutOfRangeError(f"range {value} is outside the file ({size} bytes)")
    return start, end, True


def _base(request: Request) -> str:
    scope = request.scope
    host = request.headers.get("host")
    if not host:
        server_host, port = scope.get("server") or ("localhost", 80)
        host = f"{server_host}:{port}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"
