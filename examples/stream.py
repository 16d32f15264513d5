"""A streaming app: a generator endpoint yields partial outputs as it makes them.

    falrt deploy examples/stream.py::Tokens
    falrt call local/tokens --stream --data '{"sentence": "the quick brown fox"}'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

import falrt


class Input(msgspec.Struct):
    sentence: str
    # Pause between tokens, to make the streaming visible.
    delay_s: float = 0.05


class Token(msgspec.Struct):
    index: int
    token: str
    text_so_far: str


class Tokens(falrt.App):
    app_name = "tokens"
    max_multiplexing = 8

    @falrt.endpoint("/")
    async def tokens(self, request: Input) -> AsyncIterator[Token]:
        words = request.sentence.split()
        for index, word in enumerate(words):
            if request.delay_s > 0:
                await asyncio.sleep(request.delay_s)
            yield Token(index=index, token=word, text_so_far=" ".join(words[: index + 1]))
