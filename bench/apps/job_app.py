"""The app bench/validation.py calls: an image-generation request's shape (a prompt, sizes,
a list of LoRA weights, a seed), answered at once, so the time measured is falrt's own and
the input check's share of it shows."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

import falrt


class Lora(msgspec.Struct):
    path: str
    scale: Annotated[float, msgspec.Meta(ge=0, le=4)] = 1.0


class ImageSize(msgspec.Struct):
    width: Annotated[int, msgspec.Meta(ge=64, le=4096)] = 1024
    height: Annotated[int, msgspec.Meta(ge=64, le=4096)] = 1024


class Job(msgspec.Struct):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    negative_prompt: str = ""
    image_size: ImageSize = msgspec.field(default_factory=ImageSize)
    num_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=100)] = 28
    guidance_scale: float = 3.5
    seed: int | None = None
    loras: list[Lora] = []
    output_format: Literal["jpeg", "png"] = "jpeg"
    enable_safety_checker: bool = True


class Accepted(msgspec.Struct):
    steps: int


class JobApp(falrt.App):
    app_name = "job"
    max_multiplexing = 32
    max_concurrency = 1
    keep_alive = 600

    @falrt.endpoint("/")
    async def run(self, request: Job) -> Accepted:
        return Accepted(request.num_inference_steps)
