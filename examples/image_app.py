"""Images in, images out: a box blur (or a negative) of an image given by URL, in numpy.

    falrt deploy examples/image_app.py::ImageFilter
    URL=$(falrt files upload cat.png)
    falrt call local/image-filter --sync --data "{\"image\": \"$URL\", \"radius\": 4}"

The input's `image` is a `falrt.Image` field: callers give a URL (one `falrt files upload`
or `upload_file` printed, any http(s) URL, or a `data:` URL), and the runner fetches it into
its cache before the handler runs (docs/files.md, "Files in apps"). The handler returns
`falrt.Image.from_array(...)`: the runner uploads the PNG to the server's file store, and
the caller receives fal's image object, whose `url` fetches without a key:

    {"image": {"url": "http://…/files/…?expires=…&signature=…", "content_type": "image/png",
               "file_name": "image.png", "file_size": 48213, "width": 640, "height": 480},
     "filter": "blur"}

Start the server with `--http-listen` (or `--public-url`): output URLs point there. numpy and
Pillow come from `requirements`; no model is downloaded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

import falrt

REQUIREMENTS = ["numpy==2.4.6", "pillow==13.0.0"]


class Input(msgspec.Struct):
    image: falrt.Image
    filter: Literal["blur", "negative"] = "blur"
    radius: Annotated[int, msgspec.Meta(ge=1, le=32)] = 3  # of the blur's square, in pixels


class Output(msgspec.Struct):
    image: falrt.Image
    filter: str


def box_blur(pixels: object, radius: int) -> object:
    """Each pixel the mean of the (2r+1)^2 square around it (edges repeated), computed with
    summed-area tables: the cost does not grow with the radius."""
    import numpy as np

    size = 2 * radius + 1
    padded = np.pad(np.asarray(pixels, dtype=np.float64),
                    ((radius + 1, radius), (radius + 1, radius), (0, 0)), mode="edge")
    sums = padded.cumsum(axis=0).cumsum(axis=1)
    window = (sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size]
              + sums[:-size, :-size])
    return np.rint(window / size**2).astype(np.uint8)


class ImageFilter(falrt.App):
    app_name = "image-filter"
    requirements = REQUIREMENTS
    keep_alive = 300
    max_multiplexing = 2

    @falrt.endpoint("/")
    def apply(self, request: Input) -> Output:
        import numpy as np

        # request.image.path is the runner's local copy; to_pil() opens it with Pillow.
        pixels = np.asarray(request.image.to_pil().convert("RGB"))
        blurred = request.filter == "blur"
        result = box_blur(pixels, request.radius) if blurred else 255 - pixels
        return Output(image=falrt.Image.from_array(result), filter=request.filter)
