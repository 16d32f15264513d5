"""A test app for fal's own client: one request at a time, logs, a FIFO gate, and a stream.

`/` prints a line, waits on `gate` (a FIFO the test writes one byte to; none: no wait),
prints another and answers: a test sees the request queued behind another, in progress
with its first log line, then completed with both. `/stream` yields one event per word
(fal's convention: a streaming endpoint at `/stream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

import falrt


class Input(msgspec.Struct):
    text: str
    gate: str = ""


class Output(msgspec.Struct):
    echo: str


class Sentence(msgspec.Struct):
    sentence: str


class Word(msgspec.Struct):
    index: int
    word: str


class Speaker(falrt.App):
    app_name = "speaker"
    max_multiplexing = 1  # a second request waits in the queue while one is gated
    max_concurrency = 1
    keep_alive = 300

    @falrt.endpoint("/")
    def speak(self, request: Input) -> Output:
        print(f"heard {request.text}")
        if request.gate:
            with open(request.gate, "rb") as gate:
                gate.read(1)
        print(f"said {request.text}")
        return Output(echo=request.text)

    @falrt.endpoint("/stream")
    async def words(self, request: Sentence) -> AsyncIterator[Word]:
        for index, word in enumerate(request.sentence.split()):
            yield Word(index=index, word=word)
