"""A test app for payloads by reference (tests/test_payload_refs.py): `/` answers the size
and sha256 of the text it was given; `/make` answers a text of `size` bytes made from
`seed` (the test makes the same bytes to compare), after reading one byte from the FIFO
`gate` when one is given. One request at a time."""

from __future__ import annotations

import hashlib

import msgspec

import falrt


class Text(msgspec.Struct):
    text: str


class Digest(msgspec.Struct):
    size: int
    sha256: str


class Make(msgspec.Struct):
    size: int
    seed: str = "x"
    gate: str = ""  # path of a FIFO to read one byte from before answering


def made(size: int, seed: str) -> str:
    """`size` ASCII characters: `seed` repeated."""
    return (seed * (size // len(seed) + 1))[:size]


class BulkyPayloads(falrt.App):
    keep_alive = 300
    max_multiplexing = 1
    max_concurrency = 1  # (one runner: a gated request holds the only slot)

    @falrt.endpoint("/")
    def digest(self, request: Text) -> Digest:
        data = request.text.encode()
        return Digest(size=len(data), sha256=hashlib.sha256(data).hexdigest())

    @falrt.endpoint("/make")
    def make(self, request: Make) -> Text:
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        return Text(text=made(request.size, request.seed))
