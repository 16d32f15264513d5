"""`falrt.File` and `falrt.Image` as field types (falrt/sdk/files.py) and the runner's fetches
of input files (shim/files.py) without a server: schemas in and out, decoding URLs with
errors naming the field, the edge check accepting what the decoder accepts, output
constructors and their encoded shape, and fetches of data and http URLs into the cache by
sha256 (a second request fetches nothing), with limits and clear errors.

The http fetches go to a real local HTTP server (http.server on port 0) that counts the
requests it answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pydantic
import pytest
from falrt.shim.files import RunnerFiles  # type: ignore[import-not-found]
from PIL import Image as PILImage

import falrt
from falrt.errors import ValidationFailedError
from falrt.sdk.codec import codec_for, json_schema
from falrt.sdk.files import mentions_files
from falrt.sdk.input_check import input_check_for
from falrt.server.queue.input_check import compile_check

pytestmark = pytest.mark.unit


class StructIn(msgspec.Struct):
    image: falrt.Image
    extras: list[falrt.File] = []


class StructOut(msgspec.Struct):
    image: falrt.Image
    note: str = ""


class ModelIn(pydantic.BaseModel):
    image: falrt.Image


class ModelOut(pydantic.BaseModel):
    file: falrt.File


def png(width: int = 5, height: int = 3, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def field(schema: dict[str, object], name: str) -> object:
    defs = schema.get("$defs")
    body = next(iter(defs.values())) if isinstance(defs, dict) else schema
    return body["properties"][name]  # type: ignore[index]


# -- schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("model", [StructIn, ModelIn])
def test_an_input_file_field_is_a_url_string_in_the_schema(model: type) -> None:
    image = field(json_schema(model), "image")
    assert image == {**image, "type": "string", "format": "uri"}  # type: ignore[dict-item]


@pytest.mark.parametrize(("model", "name"), [(StructOut, "image"), (ModelOut, "file")])
def test_an_output_file_field_is_fals_file_object_in_the_schema(model: type, name: str) -> None:
    schema = field(json_schema(model, output=True), name)
    assert schema["type"] == "object"  # type: ignore[index]
    properties = set(schema["properties"])  # type: ignore[index]
    assert {"url", "content_type", "file_name", "file_size"} <= properties
    assert ({"width", "height"} <= properties) == (name == "image")


def test_only_types_holding_files_are_marked_as_such() -> None:
    class Nested(msgspec.Struct):
        inner: list[StructIn] | None = None

    assert mentions_files(StructIn) and mentions_files(Nested) and mentions_files(ModelOut)
    assert not mentions_files(msgspec.defstruct("Plain", [("x", int)]))


# -- decoding ------------------------------------------------------------------------


@pytest.mark.parametrize("model", [StructIn, ModelIn])
def test_a_url_decodes_into_an_unfetched_file(model: type) -> None:
    value = codec_for(model).decode(b'{"image": "https://example.org/a/cat.png?x=1"}', False)
    assert isinstance(value.image, falrt.Image)
    assert (value.image.url, value.image.file_name) == ("https://example.org/a/cat.png?x=1",
                                                        "cat.png")
    with pytest.raises(RuntimeError, match="no local file"):
        value.image.path  # noqa: B018 (fetched by the runner, not by decoding)


@pytest.mark.parametrize("model", [StructIn, ModelIn])
@pytest.mark.parametrize("bad", [b'"ftp://x/y.png"', b'"cat.png"', b"3", b'{"url": "x"}'])
def test_anything_but_a_supported_url_is_refused_naming_the_field(
    model: type, bad: bytes
) -> None:
    with pytest.raises(ValidationFailedError) as caught:
        codec_for(model).decode(b'{"image": ' + bad + b"}", False)
    assert [loc for loc, _ in caught.value.field_errors] == ["$.image"]


@pytest.mark.parametrize("model", [StructIn, ModelIn])
def test_the_edge_check_accepts_every_url_the_runner_accepts(model: type) -> None:
    schema = msgspec.json.encode(json_schema(model)).decode()
    check = compile_check(schema, input_check_for(model), "test")
    for url in ("https://example.org/cat.png", "http://h:1/files/" + "a" * 32,
                data_url(b"xy")):
        payload = msgspec.json.encode({"image": url})
        codec_for(model).decode(payload, False)
        if check is not None:
            check(payload)


# -- outputs -------------------------------------------------------------------------


def test_images_are_made_from_arrays_pil_images_and_bytes() -> None:
    pixels = np.zeros((3, 5, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    from_array = falrt.Image.from_array(pixels)
    assert (from_array.width, from_array.height, from_array.content_type) == (5, 3, "image/png")
    assert np.array_equal(np.asarray(from_array.to_pil()), pixels)
    from_pil = falrt.Image.from_pil(PILImage.new("RGB", (7, 2)), format="jpeg")
    assert (from_pil.width, from_pil.height, from_pil.content_type) == (7, 2, "image/jpeg")
    from_bytes = falrt.Image.from_bytes(png(4, 6), content_type="image/png")
    assert (from_bytes.width, from_bytes.height, from_bytes.file_size) == (4, 6, len(png(4, 6)))


def test_files_are_made_from_bytes_and_paths(tmp_path: Path) -> None:
    made = falrt.File.from_bytes(b"hello", content_type="text/plain")
    assert (made.as_bytes(), made.file_size, made.url) == (b"hello", 5, "")
    source = tmp_path / "notes.txt"
    source.write_bytes(b"abc")
    from_path = falrt.File.from_path(source)
    assert (from_path.file_name, from_path.content_type, from_path.file_size) == (
        "notes.txt", "text/plain", 3)
    assert from_path.path == source and from_path.as_bytes() == b"abc"
    with pytest.raises(FileNotFoundError):
        falrt.File.from_path(tmp_path / "missing")


@pytest.mark.parametrize("msgpack", [False, True])
def test_an_uploaded_output_encodes_as_fals_shape(msgpack: bool) -> None:
    image = falrt.Image.from_bytes(png(4, 6), content_type="image/png")
    image.uploaded("http://h/files/" + "b" * 32 + "?sig=1", 99)
    for model, value in ((StructOut, StructOut(image=image)), (ModelOut, ModelOut(file=image))):
        data = codec_for(model).encode(value, msgpack)
        decoded = (msgspec.msgpack if msgpack else msgspec.json).decode(data)
        out = decoded["image" if model is StructOut else "file"]
        assert out == {"url": image.url, "content_type": "image/png", "file_name": "image.png",
                       "file_size": 99, "width": 4, "height": 6}


def test_an_output_file_that_was_not_uploaded_cannot_be_encoded() -> None:
    value = StructOut(image=falrt.Image.from_bytes(png(), content_type="image/png"))
    with pytest.raises(TypeError, match="has no URL"):
        codec_for(StructOut).encode(value, False)


# -- the runner's fetches ----------------------------------------------------------------


class _Counting(http.server.SimpleHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self) -> None:
        type(self).served.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server of `tmp_path` on port 0: (its base URL, the paths it served)."""
    served: list[str] = []
    handler = type("Handler", (_Counting,), {"served": served})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def fetch(files: RunnerFiles, url: str) -> falrt.Image:
    value = codec_for(StructIn).decode(msgspec.json.encode({"image": url}), False)
    asyncio.run(files.fetch_inputs(value))
    return value.image  # type: ignore[no-any-return]


def test_a_data_url_is_decoded_into_the_cache_by_sha256() -> None:
    files, data = RunnerFiles(), png()
    first = fetch(files, data_url(data))
    assert first.path.read_bytes() == data and first.path.name == hashlib.sha256(data).hexdigest()
    assert (first.cached, first.file_size, first.content_type) == (False, len(data), "image/png")
    assert (first.width, first.height) == (5, 3)
    assert fetch(files, data_url(data)).cached


def test_an_http_url_is_fetched_once_per_runner(
    web: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, served = web
    (tmp_path / "cat.png").write_bytes(png(2, 2))
    files = RunnerFiles()
    first = fetch(files, f"{base}/cat.png")
    second = fetch(files, f"{base}/cat.png")
    assert (first.cached, second.cached, first.file_name) == (False, True, "cat.png")
    assert second.path == first.path and first.as_bytes() == png(2, 2)
    assert served == ["/cat.png"]


def test_requests_wanting_one_url_at_once_share_one_fetch(
    web: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, served = web
    (tmp_path / "dog.png").write_bytes(png(3, 3))
    files = RunnerFiles()

    async def both() -> list[StructIn]:
        values = [codec_for(StructIn).decode(
            msgspec.json.encode({"image": f"{base}/dog.png"}), False) for _ in range(2)]
        await asyncio.gather(*(files.fetch_inputs(value) for value in values))
        return values

    values = asyncio.run(both())
    assert values[0].image.path == values[1].image.path and served == ["/dog.png"]


def test_a_failed_fetch_is_an_input_error_naming_the_field(
    web: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = web
    (tmp_path / "ok.png").write_bytes(png())
    value = codec_for(StructIn).decode(msgspec.json.encode(
        {"image": f"{base}/ok.png", "extras": [f"{base}/ok.png", f"{base}/gone.txt"]}), False)
    with pytest.raises(ValidationFailedError) as caught:
        asyncio.run(RunnerFiles().fetch_inputs(value))
    [(loc, message)] = caught.value.field_errors
    assert loc == "$.extras[1]" and "HTTP 404" in message and "gone.txt" in message


def test_a_file_over_the_fetch_limit_is_refused(
    web: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = web
    (tmp_path / "big.bin").write_bytes(b"x" * 2048)
    for url in (f"{base}/big.bin", data_url(b"x" * 2048)):
        with pytest.raises(ValidationFailedError, match="fetched") as caught:
            fetch(RunnerFiles(max_fetch_bytes=1024), url)
        assert "at most 1024 bytes" in caught.value.field_errors[0][1]


def test_an_unreachable_host_is_a_clear_input_error() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        fetch(RunnerFiles(fetch_timeout_s=5), "http://127.0.0.1:9/nothing.png")
    [(loc, message)] = caught.value.field_errors
    assert loc == "$.image" and "could not fetch http://127.0.0.1:9/nothing.png" in message
