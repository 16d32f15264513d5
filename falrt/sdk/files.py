"""`falrt.File` and `falrt.Image`: files as field types of endpoint inputs and outputs
(docs/files.md, "Files in apps").

In an **input** model, a field of these types takes a URL string: the server's own file URLs
(signed or not), `http(s)://` URLs and `data:` URLs; its JSON Schema is a string. Decoding
only checks the URL; the runner then fetches every file of the input (once per runner,
cached by sha256) before the handler runs, and the handler gets an object whose `path` is a
local file (`as_bytes()`, and `Image.to_pil()`).

In an **output** model, a handler gives `File.from_bytes(...)`, `File.from_path(...)`,
`Image.from_pil(...)` or `Image.from_array(...)`; the runner uploads its bytes to the
server's file store before the output is encoded, and the caller gets fal's shape: `url`
(signed), `content_type`, `file_name`, `file_size` (and `width`, `height` for images). A
File that already has a URL (an input passed on) is returned as it is, not uploaded again.

msgspec Structs use the hooks below (`dec_hook`, `enc_hook`, `schema_hook`, which
falrt/sdk/codec.py passes); pydantic models use the types' own core schema. Pillow and numpy
are imported only by the methods that need them.
"""

from __future__ import annotations

import collections.abc
import io
import mimetypes
import typing
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "File",
    "Image",
    "dec_hook",
    "enc_hook",
    "input_schema_hook",
    "mentions_files",
    "output_schema_hook",
]

URL_SCHEMES = ("http://", "https://", "data:")
DEFAULT_TYPE = "application/octet-stream"
_OUTPUT_FIELDS = {"url": {"type": "string"}, "content_type": {"type": "string"},
                  "file_name": {"type": "string"}, "file_size": {"type": "integer"}}
_SIZE_FIELDS = {"width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]}}


class File:
    """A file in an endpoint's input or output (module docstring).

    Attributes (fal's): `url` ("" until an output is uploaded), `content_type`, `file_name`,
    `file_size` (None until known). In a handler's input also `path` (the local copy,
    read-only: the runner's cache) and `cached` (True when the runner had the bytes already
    and fetched nothing). Not thread-safe while the runner fills it in; plain data after.
    """

    __slots__ = ("_data", "_path", "cached", "content_type", "file_name", "file_size", "url")

    def __init__(
        self, url: str = "", content_type: str = DEFAULT_TYPE, file_name: str = "",
        file_size: int | None = None,
    ) -> None:
        self.url = url
        self.content_type = content_type
        self.file_name = file_name
        self.file_size = file_size
        self.cached = False
        self._path: Path | None = None
        self._data: bytes | None = None

    # -- constructors of outputs ------------------------------------------------------

    @classmethod
    def from_bytes(
        cls, data: bytes, content_type: str | None = None, file_name: str | None = None,
    ) -> typing.Self:
        """An output file holding `data` (uploaded by the runner when the output is sent)."""
        extension = mimetypes.guess_extension(content_type or "") or ".bin"
        name = file_name or cls.__name__.lower() + extension
        file = cls(content_type=content_type or _guess_type(name), file_name=name,
                   file_size=len(data))
        file._data = bytes(data)
        return file

    @classmethod
    def from_path(
        cls, path: str | Path, content_type: str | None = None, file_name: str | None = None,
    ) -> typing.Self:
        """An output file with the bytes at `path` (read when the runner uploads it, so the
        file must stay until the handler's output is sent). Raises FileNotFoundError."""
        source = Path(path)
        file = cls(content_type=content_type or _guess_type(source.name),
                   file_name=file_name or source.name, file_size=source.stat().st_size)
        file._path = source
        return file

    # -- what a handler reads ---------------------------------------------------------

    @property
    def path(self) -> Path:
        """The local file holding the bytes. Raises RuntimeError when there is none yet (an
        input the runner has not fetched, or an output made with `from_bytes`)."""
        if self._path is None:
            raise RuntimeError(f"{type(self).__name__} {self.url or self.file_name!r} has no "
                               "local file (inputs are fetched by the runner before the "
                               "handler runs; realtime inputs are not)")
        return self._path

    def as_bytes(self) -> bytes:
        """The file's bytes (read from `path` when not held in memory)."""
        return self._data if self._data is not None else self.path.read_bytes()

    # -- what the runner does ---------------------------------------------------------

    @property
    def needs_upload(self) -> bool:
        """Whether this is an output with bytes but no URL yet."""
        return not self.url

    @property
    def data(self) -> bytes | None:
        """The bytes held in memory (`from_bytes`), else None."""
        return self._data

    @property
    def local_path(self) -> Path | None:
        """The local file when there is one, else None (never raises)."""
        return self._path

    def bind(self, path: Path, size: int, content_type: str, file_name: str,
             cached: bool) -> None:
        """Called by the runner once an input's bytes are in `path`."""
        self._path, self.file_size, self.cached = path, size, cached
        self.content_type = content_type or self.content_type
        self.file_name = file_name or self.file_name

    def uploaded(self, url: str, size: int) -> None:
        """Called by the runner once an output is in the file store at `url`."""
        self.url, self.file_size, self._data = url, size, None

    # -- wire forms -------------------------------------------------------------------

    @classmethod
    def from_url(cls, value: object) -> typing.Self:
        """An input field's value: a URL of a supported scheme. Raises ValueError (msgspec
        and pydantic report it with the field's path)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a URL string (http, https or data), got "
                             f"{type(value).__name__}")
        if not value.lower().startswith(URL_SCHEMES):
            bare = value.split("?", 1)[0]  # (never a signature in an error)
            shown = bare if len(bare) <= 60 else bare[:57] + "..."
            raise ValueError(f"expected an http, https or data URL, got {shown!r}")
        return cls(url=value, file_name=_name_of(value))

    def to_dict(self) -> dict[str, Any]:
        """fal's output shape. Raises TypeError when the file was not uploaded."""
        if not self.url:
            raise TypeError(f"{type(self).__name__} {self.file_name!r} has no URL: the runner "
                            "uploads files of unary, streaming and batched outputs only")
        return {"url": self.url, "content_type": self.content_type,
                "file_name": self.file_name, "file_size": self.file_size}

    @classmethod
    def input_schema(cls) -> dict[str, Any]:
        return {"type": "string", "format": "uri", "title": cls.__name__,
                "description": f"{cls.__name__} URL: http(s), data, or the server's files"}

    @classmethod
    def output_schema(cls) -> dict[str, Any]:
        return {"type": "object", "title": cls.__name__, "properties": dict(_OUTPUT_FIELDS),
                "required": ["url", "content_type", "file_name", "file_size"]}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls.from_url, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda file: file.to_dict()))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return cls.output_schema() if handler.mode == "serialization" else cls.input_schema()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url[:80]!r}, file_name={self.file_name!r})"


class Image(File):
    """An image file: a `File` with `width` and `height` (read from the image's header with
    Pillow when not given), `to_pil()`, and constructors from PIL images and arrays."""

    __slots__ = ("_size",)

    def __init__(
        self, url: str = "", content_type: str = DEFAULT_TYPE, file_name: str = "",
        file_size: int | None = None, width: int | None = None, height: int | None = None,
    ) -> None:
        super().__init__(url, content_type, file_name, file_size)
        self._size = (width, height) if width is not None and height is not None else None

    @classmethod
    def from_pil(cls, image: Any, format: str = "png") -> Image:
        """An output image encoded from a PIL image (`format`: any Pillow writes)."""
        buffer = io.BytesIO()
        image.save(buffer, format=format.upper())
        out = cls.from_bytes(buffer.getvalue(), f"image/{format.lower()}",
                             f"image.{format.lower()}")
        out._size = (int(image.width), int(image.height))
        return out

    @classmethod
    def from_array(cls, array: Any, format: str = "png") -> Image:
        """An output image from an array of pixels (height x width, or x channels; uint8),
        such as numpy's. Needs Pillow."""
        from PIL import Image as PILImage

        return cls.from_pil(PILImage.fromarray(array), format)

    def sized(self, width: int, height: int) -> None:
        """Called by the runner once it read an input image's size."""
        self._size = (width, height)

    @property
    def width(self) -> int | None:
        return self._dimensions()[0]

    @property
    def height(self) -> int | None:
        return self._dimensions()[1]

    def _dimensions(self) -> tuple[int | None, int | None]:
        if self._size is None and (self.local_path is not None or self.data is not None):
            try:
                with self.to_pil() as image:
                    self._size = (int(image.width), int(image.height))
            except (ImportError, OSError, ValueError):  # no Pillow, or not an image it reads
                return None, None
        return self._size if self._size is not None else (None, None)

    def to_pil(self) -> Any:
        """The image as a PIL image (opened lazily by Pillow). Needs Pillow."""
        from PIL import Image as PILImage

        if self.data is not None:
            return PILImage.open(io.BytesIO(self.data))
        return PILImage.open(self.path)

    def uploaded(self, url: str, size: int) -> None:
        self._dimensions()  # (while the bytes are still at hand)
        super().uploaded(url, size)

    def to_dict(self) -> dict[str, Any]:
        width, height = self._dimensions()
        return {**super().to_dict(), "width": width, "height": height}

    @classmethod
    def output_schema(cls) -> dict[str, Any]:
        schema = super().output_schema()
        schema["properties"] |= _SIZE_FIELDS
        return schema


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or DEFAULT_TYPE


def _name_of(url: str) -> str:
    """The last path component of an http(s) URL ("" for a data URL or none)."""
    if url.lower().startswith("data:"):
        return ""
    path = url.split("?", 1)[0].split("#", 1)[0]
    return path.rstrip("/").rsplit("/", 1)[-1] if path.count("/") > 2 else ""


# -- msgspec hooks (falrt/sdk/codec.py) --------------------------------------------------


def dec_hook(tp: type[Any], value: Any) -> Any:
    """msgspec's decode hook: File fields from URL strings."""
    if isinstance(tp, type) and issubclass(tp, File):
        return tp.from_url(value)
    raise NotImplementedError(f"{tp!r} is not a type falrt decodes")


def enc_hook(value: Any) -> Any:
    """msgspec's encode hook: uploaded Files as fal's output shape."""
    if isinstance(value, File):
        return value.to_dict()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def input_schema_hook(tp: type[Any]) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, File):
        return tp.input_schema()
    raise NotImplementedError(f"{tp!r} has no JSON Schema")


def output_schema_hook(tp: type[Any]) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, File):
        return tp.output_schema()
    raise NotImplementedError(f"{tp!r} has no JSON Schema")


# -- which types hold files --------------------------------------------------------------


def mentions_files(tp: object) -> bool:
    """Whether values of the model type `tp` can hold Files (in fields, nested models,
    containers). Computed once per type; the runner skips its file steps otherwise."""
    known = _MENTIONS.get(tp)
    if known is None:
        known = _MENTIONS[tp] = _mentions(tp, set())
    return known


_MENTIONS: dict[object, bool] = {}


def _mentions(annotation: Any, seen: set[int]) -> bool:
    if id(annotation) in seen:
        return False
    seen.add(id(annotation))
    if isinstance(annotation, type):
        if issubclass(annotation, File):
            return True
        return any(_mentions(field, seen) for field in _field_types(annotation))
    return any(_mentions(arg, seen) for arg in typing.get_args(annotation))


def _field_types(tp: type[Any]) -> list[Any]:
    """The annotations of a Struct's or pydantic model's fields (none for other classes)."""
    if issubclass(tp, msgspec.Struct):
        return [field.type for field in msgspec.structs.fields(tp)]
    fields = getattr(tp, "model_fields", None)
    if isinstance(fields, collections.abc.Mapping):
        return [field.annotation for field in fields.values()]
    return []
