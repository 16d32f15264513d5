"""The app bench/files.py calls for files: takes a `falrt.File` by URL and answers a new
`falrt.File` output with the same bytes, so a request's input and output are files of the
same size (the handler itself does no work on them)."""

from __future__ import annotations

import msgspec

import falrt


class FileIn(msgspec.Struct):
    file: falrt.File


class FileOut(msgspec.Struct):
    file: falrt.File


class FileEcho(falrt.App):
    keep_alive = 300

    @falrt.endpoint("/")
    def echo(self, request: FileIn) -> FileOut:
        source = request.file
        return FileOut(file=falrt.File.from_path(
            source.path, content_type=source.content_type, file_name="output.bin"))
