"""The runner's side of `falrt.File` fields (falrt/sdk/files.py; docs/files.md, "Files in
apps"): fetching the files of an input before the handler runs, and uploading the files of
an output before it is encoded.

Inputs. Every File of a decoded input is fetched once per runner and kept in a cache folder
by sha256 (a private temporary folder, removed when the runner exits):
- the server's own file URLs (`.../files/<32 hex>`, signed or not) are read over gRPC from
  the Files service with the runner's key (`FALRT_KEY`, through `falrt.client.connection`
  as any app code would): a Stat first, so bytes the cache holds are not read again; a file
  the server does not have is then tried as a plain URL; a runner on the server's host
  (FALRT_FILES_LOCAL) instead hard-links (or copies) the file from the server's local store
  (docs/files.md, "Runners on the server's host");
- `http(s)://` URLs are fetched with urllib, at most `MAX_FETCH_BYTES` within
  `FETCH_TIMEOUT_S`; each URL once per runner (a later change behind the same URL is not
  seen);
- `data:` URLs are decoded.
Blocking work (network, disk) runs in the loop's default thread pool, never on the event
loop and never in the handler pool. Requests that want the same URL at once share one
fetch. A file that cannot be fetched fails the request with ValidationFailedError naming the
field (a bad input: INVALID_ARGUMENT, HTTP 422); failures are not cached.

The Files client (falrt/client/files.py) is imported on first use only: a runner of an app
without File fields imports nothing of the client.

Outputs. Every File without a URL (made with `from_bytes`, `from_path`, `Image.from_pil`,
...) is uploaded to the Files service with the runner's key (resumable, sha256-checked:
falrt/client/files.py) and gets its signed URL; the queue carries only the URL. A runner
on the server's host writes it into the store's staging file and has the server adopt it.
A same-host transfer that fails for another reason than the file's or the key's is logged
once and the runner uses gRPC from then on.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from falrt.errors import FalrtError, ValidationFailedError
from falrt.sdk.app import App
from falrt.sdk.codec import is_pydantic_model
from falrt.sdk.files import File, Image, mentions_files

from .files_connection import FilesConnection

if TYPE_CHECKING:  # (imported when first used: only apps with File fields need the client)
    from falrt.client.files import FilesClient

__all__ = ["FETCH_TIMEOUT_S", "MAX_FETCH_BYTES", "FetchError", "FilesConnection", "RunnerFiles",
           "files_in"]

log = logging.getLogger(__name__)

MAX_FETCH_BYTES = 1 << 30  # an input file of an http(s), data or own URL: at most 1 GiB
FETCH_TIMEOUT_S = 60.0  # an http(s) fetch, from the request to the last byte
CHUNK_BYTES = 1 << 20
_OWN_PATH = re.compile(r"/files/([0-9a-f]{32})")


class FetchError(Exception):
    """An input file could not be fetched; the message says why (it reaches the caller)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """An input file in the cache."""

    path: Path
    size: int
    content_type: str
    file_name: str


def files_in(value: Any, at: str = "$") -> Iterator[tuple[str, File]]:
    """The Files a decoded value holds, with their JSON paths ($.image, $.items[2].mask)."""
    if isinstance(value, File):
        yield at, value
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from files_in(getattr(value, name), f"{at}.{name}")
    elif is_pydantic_model(type(value)):
        for name in type(value).model_fields:
            yield from files_in(getattr(value, name), f"{at}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from files_in(item, f"{at}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from files_in(item, f"{at}.{key}")


class RunnerFiles:
    """Fetches input files and uploads output files for one runner (module docstring).
    Loop-affine: call its coroutines from the runner's event loop."""

    def __init__(
        self, connection: FilesConnection | None = None,
        max_fetch_bytes: int = MAX_FETCH_BYTES, fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self._connection = connection or FilesConnection()
        self._max_bytes = max_fetch_bytes
        self._timeout_s = fetch_timeout_s
        self._lock = threading.Lock()  # (the cache folder is made in threads)
        self._folder: Path | None = None
        self._by_url: dict[str, Fetched] = {}
        self._pending: dict[str, asyncio.Future[tuple[Fetched, bool]]] = {}

    @classmethod
    def for_app(
        cls, app_class: type[App], connection: FilesConnection | None = None
    ) -> RunnerFiles | None:
        """A RunnerFiles when an endpoint of the app takes or returns Files, else None."""
        endpoints = app_class.endpoints().values()
        if any(mentions_files(ep.input_type) or mentions_files(ep.output_type)
               for ep in endpoints):
            return cls(connection)
        return None

    # -- inputs -----------------------------------------------------------------------

    async def fetch_inputs(self, value: Any) -> None:
        """Fetches every File of a decoded input into the cache and binds it to its local
        copy. Raises ValidationFailedError naming every field whose file failed."""
        found = [(at, file) for at, file in files_in(value) if file.local_path is None]
        results = await asyncio.gather(*(self._fetch(at, file) for at, file in found),
                                       return_exceptions=True)
        errors = [(at, str(r)) for (at, _), r in zip(found, results, strict=True)
                  if isinstance(r, FetchError)]
        if errors:
            raise ValidationFailedError("an input file could not be fetched",
                                        field_errors=errors)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _fetch(self, at: str, file: File) -> None:
        fetched = self._by_url.get(file.url)
        cached = fetched is not None
        if fetched is None:
            fetched, cached = await self._shared_fetch(file.url)
        file.bind(fetched.path, fetched.size, fetched.content_type, fetched.file_name, cached)
        if isinstance(file, Image):
            await asyncio.to_thread(_check_image, file)
        log.info("input %s: %d bytes%s", at, fetched.size,
                 " from the runner's cache" if cached else " fetched")

    async def _shared_fetch(self, url: str) -> tuple[Fetched, bool]:
        """One fetch per URL at a time, whoever asks; a fetch goes on (and is cached) when
        the request that started it is cancelled."""
        pending = self._pending.get(url)
        joined = pending is not None
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._fetch_blocking, url))
            self._pending[url] = pending
            pending.add_done_callback(lambda done: self._settle(url, done))
        fetched, had = await asyncio.shield(pending)
        return fetched, had or joined

    def _settle(self, url: str, done: asyncio.Future[Any]) -> None:
        """Remembers a fetched URL (not a data URL: it is the bytes themselves, and its
        sha256 finds them in the cache anyway)."""
        del self._pending[url]
        if not done.cancelled() and done.exception() is None and not _is_data(url):
            self._by_url[url] = done.result()[0]

    # -- fetching (in a worker thread) ------------------------------------------------

    def _fetch_blocking(self, url: str) -> tuple[Fetched, bool]:
        """The file at `url` in the cache, and whether it was there already."""
        if _is_data(url):
            return self._from_data_url(url)
        own = _OWN_PATH.fullmatch(urllib.parse.urlsplit(url).path)
        if own is None:
            return self._from_http(url)
        try:
            return self._from_store(own[1])
        except FalrtError as exc:  # (another server's URL, or the store is unreachable)
            try:
                return self._from_http(url)
            except FetchError as http_exc:
                raise FetchError(f"{http_exc} (the file store said: {exc})") from None

    def _from_data_url(self, url: str) -> tuple[Fetched, bool]:
        header, comma, body = url[5:].partition(",")
        if not comma:
            raise FetchError("a data URL needs a comma before its data")
        media, _, encoding = header.rpartition(";") if header.endswith(";base64") \
            else (header, "", "")
        try:
            data = (base64.b64decode("".join(body.split()), validate=True)
                    if encoding == "base64"
                    else urllib.parse.unquote_to_bytes(body))
        except (binascii.Error, ValueError) as exc:
            raise FetchError(f"the data URL's base64 is malformed: {exc}") from None
        self._check_size(len(data))
        path, had = self._put(data)
        return Fetched(path, len(data), media.split(";")[0] or "text/plain", ""), had

    def _from_store(self, file_id: str) -> tuple[Fetched, bool]:
        local = self._connection.try_local(lambda client: self._from_local_store(client, file_id))
        if local is not None:
            return local
        client = self._connection.client()
        info = client.stat(file_id)
        self._check_size(info.size)
        path = self._cache_folder() / info.sha256 if info.sha256 else None
        had = path is not None and path.exists()
        if path is None or not had:
            temp = self._temp_path()
            client.download(file_id, temp)
            path, _ = self._adopt(temp, info.sha256 or _sha256_of(temp))
        return Fetched(path, info.size, info.content_type, info.name), had

    def _from_local_store(self, client: FilesClient, file_id: str) -> tuple[Fetched, bool]:
        """The file's bytes from the server's local store, with no gRPC download: a hard
        link to them (read-only, mode 0444), else a kernel copy; their sha256 is the one
        the store computed."""
        local = client.open_local(file_id)
        info = local.file
        self._check_size(info.size)
        path = self._cache_folder() / info.sha256
        had = path.exists()
        if not had:
            temp = self._temp_path()
            try:
                _link_or_copy(Path(local.path), temp)
                path, had = self._adopt(temp, info.sha256)
            finally:
                temp.unlink(missing_ok=True)
        log.info("file %s: read from the server's store on this host", file_id)
        return Fetched(path, info.size, info.content_type, info.name), had

    def _from_http(self, url: str) -> tuple[Fetched, bool]:
        shown = _shown(url)
        request = urllib.request.Request(url, headers={"User-Agent": "falrt-runner"})
        deadline = time.monotonic() + self._timeout_s
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit():
                    self._check_size(int(length))
                kind = response.headers.get_content_type() \
                    if response.headers.get("Content-Type") else ""
                chunks = _chunks(response, deadline, f"{shown} took longer than "
                                 f"{self._timeout_s:g} s to fetch")
                path, had, size = self._receive(chunks)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{shown} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"could not fetch {shown}: {reason}") from None
        return Fetched(path, size, kind, File.from_url(url).file_name), had

    def _check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise FetchError(f"the file has {size} bytes; a runner fetches input files of at "
                             f"most {self._max_bytes} bytes")

    # -- the cache (by sha256) --------------------------------------------------------

    def _cache_folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="falrt-files-"))  # mode 0700
                atexit.register(shutil.rmtree, self._folder, True)
            return self._folder

    def _temp_path(self) -> Path:
        return self._cache_folder() / f".part-{threading.get_ident()}-{time.monotonic_ns()}"

    def _put(self, data: bytes) -> tuple[Path, bool]:
        """`data` in the cache; whether it was there already."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._cache_folder() / sha256
        if path.exists():
            return path, True
        temp = self._temp_path()
        temp.write_bytes(data)
        return self._adopt(temp, sha256)

    def _receive(self, chunks: Iterable[bytes]) -> tuple[Path, bool, int]:
        """Streams `chunks` into the cache (at most the fetch limit); (path, had, size)."""
        temp, hasher, size = self._temp_path(), hashlib.sha256(), 0
        try:
            with temp.open("wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    self._check_size(size)
                    hasher.update(chunk)
                    out.write(chunk)
            path, had = self._adopt(temp, hasher.hexdigest())
        finally:
            temp.unlink(missing_ok=True)
        return path, had, size

    def _adopt(self, temp: Path, sha256: str) -> tuple[Path, bool]:
        """Moves a complete temporary file to its sha256 name (atomic; a copy there already
        wins)."""
        path = self._cache_folder() / sha256
        if path.exists():
            temp.unlink(missing_ok=True)
            return path, True
        temp.replace(path)
        return path, False

    # -- outputs ----------------------------------------------------------------------

    async def upload_outputs(self, value: Any) -> None:
        """Uploads every File of an output that has no URL yet and gives it its signed URL.
        Raises the Files service's errors (FailedPreconditionError when the server serves
        no HTTP edge for URLs)."""
        pending = {id(file): file for _, file in files_in(value) if file.needs_upload}
        await asyncio.gather(*(asyncio.to_thread(self._upload, f) for f in pending.values()))

    def _upload(self, file: File) -> None:
        """Uploads one output file (in a worker thread: the handler is done with it, and
        nothing else touches it until the output is encoded)."""
        if self._connection.try_local(lambda client: _upload_local(client, file)):
            return
        path = temp = None
        if file.local_path is None:  # (bytes in memory: through a temporary file, not kept)
            path = temp = self._temp_path()
            temp.write_bytes(file.data or b"")
        try:
            path = path or file.path
            info = self._connection.client().upload(
                path, content_type=file.content_type, name=file.file_name or path.name)
        finally:
            if temp is not None:
                temp.unlink(missing_ok=True)
        file.uploaded(_url_of(info), info.size)  # (an Image reads its size here, if unknown)


def _upload_local(client: FilesClient, file: File) -> bool:
    """Writes one output file straight into the server's local store (its bytes, or a
    kernel copy of its local file) and has the server adopt it."""
    source, data = file.local_path, file.data
    size = source.stat().st_size if source is not None else len(data or b"")

    def write(staging: Path) -> None:
        if source is not None:
            shutil.copyfile(source, staging)
        else:
            staging.write_bytes(data or b"")

    name = file.file_name or (source.name if source is not None else "output")
    info = client.upload_local(write, size, content_type=file.content_type, name=name)
    file.uploaded(_url_of(info), info.size)
    return True


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (no bytes move), or a copy of it where a
    link cannot be made (another filesystem)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _chunks(response: Any, deadline: float, too_slow: str) -> Iterator[bytes]:
    while chunk := response.read(CHUNK_BYTES):
        if time.monotonic() > deadline:
            raise FetchError(too_slow)
        yield chunk


def _is_data(url: str) -> bool:
    return url[:5].lower() == "data:"


def _url_of(info: Any) -> str:
    from falrt.client.files import url_of

    return url_of(info)


def _check_image(image: Image) -> None:
    """Reads an input image's size from its header (so the handler need not); FetchError
    when Pillow is installed and cannot read it (without Pillow nothing is checked)."""
    try:
        from PIL import Image as PILImage
    except ImportError:
        return
    try:
        with PILImage.open(image.path) as opened:
            image.sized(int(opened.width), int(opened.height))
    except (OSError, ValueError) as exc:
        raise FetchError(f"not an image Pillow reads: {exc}") from None


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _shown(url: str) -> str:
    """A URL as errors show it: without its query (a signature) and at most 100 chars."""
    bare = url.split("?", 1)[0]
    return bare if len(bare) <= 100 else bare[:97] + "..."
