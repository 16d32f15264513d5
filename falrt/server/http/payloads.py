"""Payloads by reference at the HTTP edge (docs/files.md, "Payloads by reference").

Inputs: a call's body whose Content-Length is over the server's `payload_ref_bytes` is
streamed into the file store as it arrives (never held whole in memory) and the request
keeps the file's reference (falrt/files/refs.py), as the gRPC edge does for a Python
client's upload. The file belongs to the server's owner: an HTTP caller of a public app may
have no key, and the server takes the body on its behalf. A body without a Content-Length
(chunked) is read inline, up to the payload limit, as before.

Outputs: a result kept by reference is answered with the file's bytes streamed as the body,
with the payload's own content type, so fal's clients see the same response as for a small
output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from falrt import errors
from falrt.files import refs
from falrt.limits import by_reference
from falrt.server.http import calls
from falrt.server.http.gateway import Gateway


async def input_of(gateway: Gateway, request: Request, content_type: str) -> tuple[bytes, bool]:
    """A call's input as (bytes, by reference): the body, or the reference of the file it
    was streamed into."""
    declared = request.headers.get("content-length", "")
    files = gateway.files
    if files is None or not declared.isdigit() \
            or not by_reference(int(declared), gateway.settings.payload_ref_bytes):
        return await calls.payload(gateway, request), False
    record = await files.create(files.new_file(
        gateway.settings.owner, "input", content_type, int(declared)))
    try:
        record = await files.upload(record.file_id, 0, _body(request))
        if not record.complete:
            raise errors.InvalidArgumentError(
                f"the body ended after {record.received} of its {record.size} bytes")
    except BaseException:
        await asyncio.shield(files.store.delete(record.file_id))
        raise
    return refs.pack(refs.PayloadRef(record.file_id, record.size, files.url(record))), True


async def output_response(
    gateway: Gateway, output: bytes, content_type: str, headers: dict[str, str]
) -> Response:
    """The response of a successful call: its output as the body (streamed from its file
    when it is kept by reference)."""
    if not refs.is_ref(content_type):
        return Response(output, media_type=content_type or calls.JSON, headers=headers)
    if gateway.files is None:
        raise errors.FailedPreconditionError("the output is in a file and this edge serves "
                                             "no files")
    record = await gateway.files.complete(refs.unpack(output).file_id)
    return StreamingResponse(
        gateway.files.read(record, 0, record.size), media_type=refs.plain(content_type),
        headers={**headers, "content-length": str(record.size)})


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk
