"""A test app whose output holds images, for the dashboard's playground (tests/test_dashboard.py).

`/` draws a gradient of the asked size as a PNG (pure Python: zlib and struct) and answers
it twice: as a data URI in a plain string field, and as fal's image object (`url` and
`content_type`). The playground shows both as images.
"""

from __future__ import annotations

import base64
import struct
import zlib

import msgspec

import falrt


class Input(msgspec.Struct):
    width: int = 96
    height: int = 64


class Image(msgspec.Struct):
    url: str
    content_type: str
    width: int
    height: int


class Output(msgspec.Struct):
    thumbnail: str
    image: Image


def png(width: int, height: int) -> bytes:
    """A red-to-blue gradient, `width` by `height` pixels, RGB."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width)
                        for c in (255 * x // max(width - 1, 1), 80, 255 * y // max(height - 1, 1)))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


class Pictures(falrt.App):
    app_name = "pictures"

    @falrt.endpoint("/")
    def draw(self, request: Input) -> Output:
        width, height = min(max(request.width, 1), 512), min(max(request.height, 1), 512)
        uri = "data:image/png;base64," + base64.b64encode(png(width, height)).decode()
        print(f"drew {width}x{height}")
        return Output(thumbnail=uri, image=Image(uri, "image/png", width, height))
