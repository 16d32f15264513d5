"""The app bench/files.py calls for payloads by reference: answers its input's text, so a
request's input and output are the same size."""

from __future__ import annotations

import msgspec

import falrt


class Text(msgspec.Struct):
    text: str


class Echo(falrt.App):
    keep_alive = 300

    @falrt.endpoint("/")
    def echo(self, request: Text) -> Text:
        return request
