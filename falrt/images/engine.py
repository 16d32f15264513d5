"""What the image builders share: the engine client, image references, and the streamed
progress of builds, pushes and pulls.

The docker SDK reports build, push and pull failures only as items of the streamed log
(`{"error": ...}`), never as exceptions: `consume_stream` turns them into `ImageError`.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound, NotFound

from falrt.errors import FalrtError

LineSink = Callable[[str], None]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ImageError(FalrtError):
    """An image could not be built, pushed or pulled; the message says which step failed."""


def engine() -> docker.DockerClient:
    """A client for the local engine (DOCKER_HOST or the default socket), checked to answer."""
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise ImageError(f"no Docker engine answers ({exc}); run scripts/docker.sh") from exc
    return client


def digest(parts: Iterable[bytes | str]) -> str:
    """A stable sha256 over the parts, each length-prefixed so no two sequences collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class ImageRef:
    """`repository:tag`, where repository may start with a registry (`HOST:PORT/prefix/name`)."""

    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @staticmethod
    def make(name: str, tag: str, registry: str | None) -> ImageRef:
        """`name:tag` locally, or `REGISTRY/name:tag` (registry is `HOST:PORT[/prefix]`)."""
        repository = f"{registry.strip('/')}/{name}" if registry else name
        return ImageRef(repository, tag)


def local_image_id(client: docker.DockerClient, ref: str) -> str | None:
    """The id of the local image named `ref`, or None when the engine has none."""
    try:
        image = client.images.get(ref)
    except (ImageNotFound, NotFound):
        return None
    return str(image.id)


def consume_stream(
    items: Iterator[dict[str, Any]], what: str, on_line: LineSink | None
) -> dict[str, Any]:
    """Reads a decoded build, push or pull stream to its end.

    Forwards each log line to `on_line` as it comes and remembers the current build step
    ("Step 3/7 : RUN …"). Raises ImageError naming `what` and the failed step on the first
    error item. Returns the last `aux` item (a build's image id, a push's digest).
    """
    step = ""
    recent: deque[str] = deque(maxlen=20)  # the current step's last lines
    aux: dict[str, Any] = {}
    for item in items:
        if "error" in item or "errorDetail" in item:
            detail = item.get("errorDetail") or {}
            message = str(item.get("error") or detail.get("message") or item).strip()
            where = f" at {step}" if step else ""
            raise ImageError(f"{what} failed{where}: {message}{_explanation(recent)}")
        if "aux" in item and isinstance(item["aux"], dict):
            aux = item["aux"]
        for line in _lines(item):
            if line.startswith("Step ") and " : " in line:
                step = line
                recent.clear()
            else:
                recent.append(line)
            if on_line is not None:
                on_line(line)
    return aux


def _explanation(recent: deque[str]) -> str:
    """The step's own error lines (pip's `ERROR: …`), else its last lines, for the message."""
    errors = [line for line in recent if line.startswith(("ERROR", "E:", "error:"))]
    shown = errors or [line for line in recent if not line.startswith("Removing intermediate")]
    return "\n" + "\n".join(shown[-5:]) if shown else ""


def _lines(item: dict[str, Any]) -> list[str]:
    if "stream" in item:  # a build's output, with the colours pip gives its stderr
        text = ANSI.sub("", str(item["stream"]))
        return [line.rstrip() for line in text.splitlines() if line.strip()]
    if "status" in item:  # a push or pull: "Pushing", "Pull complete", with the layer id
        status = str(item["status"])
        if "id" in item:
            status = f"{item['id']}: {status}"
        if item.get("progress"):
            return []  # byte-count progress ticks: too many to forward as log lines
        return [status]
    return []


def push(client: docker.DockerClient, ref: ImageRef, on_line: LineSink | None) -> None:
    """Pushes `ref` to its registry; raises ImageError when the registry refuses it."""
    try:
        stream = client.api.push(ref.repository, tag=ref.tag, stream=True, decode=True)
        consume_stream(stream, f"pushing {ref}", on_line)
    except DockerException as exc:
        raise ImageError(f"pushing {ref} failed: {exc}") from exc


def pull(client: docker.DockerClient, ref: ImageRef, on_line: LineSink | None) -> str | None:
    """Pulls `ref`; returns its local id, or None when the registry does not have it."""
    try:
        stream = client.api.pull(ref.repository, tag=ref.tag, stream=True, decode=True)
        consume_stream(stream, f"pulling {ref}", on_line)
    except (NotFound, ImageNotFound):
        return None
    except ImageError as exc:
        if "not found" in str(exc) or "manifest unknown" in str(exc):
            return None
        raise
    except DockerException as exc:
        raise ImageError(f"pulling {ref} failed: {exc}") from exc
    return local_image_id(client, str(ref))
