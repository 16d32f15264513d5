"""`falrt.Image` fields end to end (docs/files.md, "Files in apps"): a real server with its
HTTP edge, a real process runner of tests/apps/negative.py (which inverts an image). The
input is given by URL (an upload's signed URL, the same file's unsigned URL, a `data:` URL);
the output comes back as a signed URL the test downloads without a key and finds inverted;
the runner's cache serves a file it has seen; a URL that cannot be fetched is an input error
naming the field."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from falrt import errors
from falrt.client import SyncClient
from tests.harness import ServerProcess, stop_cleanly

pytestmark = pytest.mark.e2e

HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("files-apps")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=["--http-listen", "127.0.0.1:0"]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def endpoint(server: ServerProcess) -> str:
    return server.deploy("tests/apps/negative.py::Negative")


def picture(seed: int, width: int = 12, height: int = 8) -> tuple[np.ndarray, bytes]:
    """Random RGB pixels and their PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return pixels, buffer.getvalue()


def downloaded_pixels(url: str) -> np.ndarray:
    """The pixels of an output image, fetched by its signed URL with no key."""
    reply = httpx.get(url, timeout=30)
    reply.raise_for_status()
    return np.asarray(PILImage.open(io.BytesIO(reply.content)).convert("RGB"))


def test_an_uploaded_image_goes_in_by_url_and_the_inverted_one_comes_back_by_url(
    client: SyncClient, endpoint: str, tmp_path: Path,
) -> None:
    pixels, data = picture(1)
    source = tmp_path / "in.png"
    source.write_bytes(data)
    url = client.upload_file(str(source))
    first = client.subscribe(endpoint, {"image": url})
    assert (first["width"], first["height"], first["input_size"]) == (12, 8, len(data))
    assert first["input_sha256"] == hashlib.sha256(data).hexdigest()
    out = first["image"]
    assert (out["content_type"], out["width"], out["height"]) == ("image/png", 12, 8)
    assert "signature=" in out["url"] and out["file_size"] > 0
    assert np.array_equal(downloaded_pixels(out["url"]), 255 - pixels)

    again = client.run(endpoint, {"image": url})
    unsigned = client.run(endpoint, {"image": url.split("?", 1)[0]})  # read over gRPC
    assert first["input_cached"] is False
    assert again["input_cached"] is True and unsigned["input_cached"] is True
    assert np.array_equal(downloaded_pixels(unsigned["image"]["url"]), 255 - pixels)


def test_a_data_url_image_is_inverted(client: SyncClient, endpoint: str) -> None:
    pixels, data = picture(2, width=5, height=9)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    out = client.run(endpoint, {"image": url})
    assert (out["width"], out["height"], out["input_cached"]) == (5, 9, False)
    assert np.array_equal(downloaded_pixels(out["image"]["url"]), 255 - pixels)


def test_each_partial_output_of_a_stream_carries_its_uploaded_image(
    client: SyncClient, endpoint: str,
) -> None:
    pixels, data = picture(3, width=4, height=4)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    frames = list(client.stream(endpoint, {"image": url}, path="/steps"))
    assert [frame["step"] for frame in frames] == [0, 1]
    assert np.array_equal(downloaded_pixels(frames[0]["image"]["url"]), pixels)
    assert np.array_equal(downloaded_pixels(frames[1]["image"]["url"]), 255 - pixels)


def test_an_http_image_is_fetched_by_the_runner_once(
    client: SyncClient, endpoint: str, tmp_path: Path,
) -> None:
    """The URL is served by a real HTTP server of the test, which counts its requests."""
    pixels, data = picture(4)
    (tmp_path / "web.png").write_bytes(data)
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            super().do_GET()

    web = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(tmp_path)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{web.server_address[1]}/web.png"
        outputs = [client.run(endpoint, {"image": url}) for _ in range(2)]
    finally:
        web.shutdown()
        web.server_close()
    assert [out["input_cached"] for out in outputs] == [False, True] and served == ["/web.png"]
    assert np.array_equal(downloaded_pixels(outputs[1]["image"]["url"]), 255 - pixels)


def test_a_batched_endpoint_fetches_and_uploads_the_files_of_each_request(
    client: SyncClient, endpoint: str,
) -> None:
    pictures = [picture(10 + n, width=3 + n, height=2) for n in range(4)]
    urls = ["data:image/png;base64," + base64.b64encode(data).decode() for _, data in pictures]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda url: client.run(endpoint, {"image": url}, path="/batch"),
                                urls))
    for (pixels, _), out in zip(pictures, outputs, strict=True):
        assert np.array_equal(downloaded_pixels(out["image"]["url"]), 255 - pixels)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/nothing.png",  # nobody listens there
    "ftp://example.org/cat.png",  # not a scheme the runner fetches
    "data:image/png;base64,@@@",  # malformed base64
])
def test_an_image_url_that_cannot_be_fetched_is_an_input_error(
    client: SyncClient, endpoint: str, url: str,
) -> None:
    with pytest.raises(errors.ValidationFailedError) as caught:
        client.run(endpoint, {"image": url})
    assert [loc for loc, _ in caught.value.field_errors] == ["$.image"]


def test_a_missing_file_of_the_server_is_an_input_error(
    client: SyncClient, endpoint: str, server: ServerProcess,
) -> None:
    base = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
    with pytest.raises(errors.ValidationFailedError) as caught:
        client.run(endpoint, {"image": f"{base}/files/{'0' * 32}"})
    [(loc, message)] = caught.value.field_errors
    assert loc == "$.image" and "no file with id" in message


def test_the_image_example_blurs_an_image(
    client: SyncClient, server: ServerProcess, tmp_path: Path,
) -> None:
    """examples/image_app.py, with its requirements (numpy, Pillow) installed by the server."""
    pixels = np.zeros((9, 9, 3), dtype=np.uint8)
    pixels[4, 4] = 255  # one white dot: the blur spreads it over the 3x3 square around it
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    source = tmp_path / "dot.png"
    source.write_bytes(buffer.getvalue())
    endpoint = server.deploy("examples/image_app.py::ImageFilter")
    out = client.run(endpoint, {"image": client.upload_file(str(source)), "radius": 1},
                     timeout=300)
    blurred = downloaded_pixels(out["image"]["url"])
    assert out["filter"] == "blur" and blurred.shape == (9, 9, 3)
    assert (blurred[3:6, 3:6] == 28).all() and blurred.sum() == 9 * 28 * 3  # 255 / 9
