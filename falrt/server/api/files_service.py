"""The public Files service (proto/falrt/v1/files.proto): converts at the edge and calls the
file plane (falrt/server/files.py), which holds the rules.

Every method first checks the caller's key (`Authenticator.check_files`); errors reach the
caller through `falrt.server.api.rpc` as every servicer's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from falrt import errors
from falrt.files.base import FileRecord, NewFile
from falrt.server.api.auth import Authenticator
from falrt.server.api.convert import timestamp
from falrt.server.api.rpc import server_stream, unary
from falrt.server.files import FilePlane
from falrt.v1 import files_pb2, files_pb2_grpc

Context = aio.ServicerContext[Any, Any]
SERVICE = files_pb2.DESCRIPTOR.services_by_name["Files"].full_name


def add_to(server: aio.Server, files: FilePlane, authenticator: Authenticator) -> None:
    """Serves the Files service on `server` (falrt/server/main.py wires it)."""
    files_pb2_grpc.add_FilesServicer_to_server(FilesService(files, authenticator), server)


def file_info(record: FileRecord, url: str = "") -> files_pb2.FileInfo:
    """A file's record as the contract's FileInfo."""
    return files_pb2.FileInfo(
        file_id=record.file_id, name=record.name, content_type=record.content_type,
        size=record.size, received=record.received, complete=record.complete,
        sha256=record.sha256 if record.complete else "", owner=record.owner,
        created_at=timestamp(record.created_at), expires_at=timestamp(record.expires_at),
        url=url)


class FilesService(files_pb2_grpc.FilesServicer):
    def __init__(self, files: FilePlane, authenticator: Authenticator) -> None:
        self._files = files
        self._authenticator = authenticator

    async def _owner(self, context: Context) -> str:
        caller = await self._authenticator.caller(context.invocation_metadata())
        return self._authenticator.check_files(caller)

    def _info(self, record: FileRecord) -> files_pb2.FileInfo:
        return file_info(record, self._files.url(record))

    @unary
    async def StartUpload(
        self, request: files_pb2.UploadHeader, context: Context
    ) -> files_pb2.FileInfo:
        owner = await self._owner(context)
        return self._info(await self._create(owner, request))

    async def _create(self, owner: str, header: files_pb2.UploadHeader) -> FileRecord:
        return await self._files.create(self._new_file(owner, header))

    def _new_file(self, owner: str, header: files_pb2.UploadHeader) -> NewFile:
        return self._files.new_file(owner, header.name, header.content_type, header.size,
                                    header.sha256, header.expires_in_s)

    @unary
    async def Upload(
        self, request: AsyncIterator[files_pb2.UploadRequest], context: Context
    ) -> files_pb2.UploadResponse:
        owner = await self._owner(context)
        messages = aiter(request)
        first = await anext(messages, None)
        match first.WhichOneof("kind") if first is not None else None:
            case "header":
                assert first is not None
                file_id, offset = (await self._create(owner, first.header)).file_id, 0
            case "resume":
                assert first is not None
                file_id, offset = first.resume.file_id, first.resume.offset
            case _:
                raise errors.InvalidArgumentError(
                    "an upload's first message is its header or a resume")
        record = await self._files.upload(file_id, offset, _chunks(messages))
        return files_pb2.UploadResponse(file=self._info(record))

    @unary
    async def UploadStatus(
        self, request: files_pb2.UploadStatusRequest, context: Context
    ) -> files_pb2.FileInfo:
        await self._owner(context)
        return self._info(await self._files.stat(request.file_id))

    @server_stream
    async def Download(
        self, request: files_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[files_pb2.DownloadResponse]:
        await self._owner(context)
        record = await self._files.complete(request.file_id)
        chunks = self._files.read(record, request.offset, record.size)
        first: files_pb2.DownloadResponse | None = files_pb2.DownloadResponse(
            file=self._info(record))
        async with contextlib.aclosing(chunks):  # (a caller gone: the file closes at once)
            async for chunk in chunks:
                if first is not None:
                    first.chunk = chunk
                    yield first
                    first = None
                else:
                    yield files_pb2.DownloadResponse(chunk=chunk)
        if first is not None:  # (nothing to send from the offset: the metadata alone)
            yield first

    @unary
    async def OpenLocal(
        self, request: files_pb2.OpenLocalRequest, context: Context
    ) -> files_pb2.LocalFile:
        await self._owner(context)
        record, path = await self._files.open_local(request.file_id)
        return files_pb2.LocalFile(file=self._info(record), path=path)

    @unary
    async def StartLocalUpload(
        self, request: files_pb2.UploadHeader, context: Context
    ) -> files_pb2.LocalFile:
        owner = await self._owner(context)
        record, path = await self._files.start_local(self._new_file(owner, request))
        return files_pb2.LocalFile(file=self._info(record), path=path)

    @unary
    async def FinishLocal(
        self, request: files_pb2.FinishLocalRequest, context: Context
    ) -> files_pb2.FileInfo:
        await self._owner(context)
        return self._info(await self._files.finish_local(request.file_id))

    @unary
    async def Stat(self, request: files_pb2.StatRequest, context: Context) -> files_pb2.FileInfo:
        await self._owner(context)
        return self._info(await self._files.stat(request.file_id))

    @unary
    async def List(
        self, request: files_pb2.ListRequest, context: Context
    ) -> files_pb2.ListResponse:
        await self._owner(context)
        records = await self._files.list(request.limit)
        return files_pb2.ListResponse(files=[self._info(r) for r in records])

    @unary
    async def Delete(
        self, request: files_pb2.DeleteRequest, context: Context
    ) -> files_pb2.DeleteResponse:
        await self._owner(context)
        await self._files.delete(request.file_id)
        return files_pb2.DeleteResponse()


async def _chunks(request: AsyncIterator[files_pb2.UploadRequest]) -> AsyncIterator[bytes]:
    """The chunks that follow an upload's first message; InvalidArgumentError for another
    header or resume among them."""
    async for message in request:
        if message.WhichOneof("kind") != "chunk":
            raise errors.InvalidArgumentError("an upload has one header (or resume), first")
        yield message.chunk
