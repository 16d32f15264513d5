"""A test app with falrt.Image fields (tests/test_files_apps.py): `/` inverts an image's
pixels; it answers the inverted image and what the handler saw of its input (size, whether
the runner had its bytes cached, the local file's name, which is the bytes' sha256).
`/steps` streams the image as it came, then inverted, as two partial outputs; `/batch` is
`/` batched (up to 4 requests per call)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np

import falrt


class Input(msgspec.Struct):
    image: falrt.Image


class Output(msgspec.Struct):
    image: falrt.Image
    input_size: int
    input_cached: bool
    input_sha256: str
    width: int
    height: int


class Frame(msgspec.Struct):
    step: int
    image: falrt.Image


class Negative(falrt.App):
    keep_alive = 300

    max_multiplexing = 4

    @falrt.endpoint("/")
    def invert(self, request: Input) -> Output:
        pixels = np.asarray(request.image.to_pil().convert("RGB"))
        return Output(
            image=falrt.Image.from_array(255 - pixels),
            input_size=request.image.file_size or 0,
            input_cached=request.image.cached,
            input_sha256=request.image.path.name,
            width=pixels.shape[1],
            height=pixels.shape[0],
        )

    @falrt.endpoint("/steps")
    def steps(self, request: Input) -> Iterator[Frame]:
        pixels = np.asarray(request.image.to_pil().convert("RGB"))
        for step, frame in enumerate((pixels, 255 - pixels)):
            yield Frame(step=step, image=falrt.Image.from_array(frame))

    @falrt.endpoint("/batch", max_batch_size=4, max_batch_wait_ms=20)
    def invert_all(self, requests: list[Input]) -> list[Output]:
        return [self.invert(request) for request in requests]
