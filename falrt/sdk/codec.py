"""Payload codecs: bytes on the wire <-> the typed input and output of an endpoint.

An endpoint's input and output types are msgspec Structs or, when pydantic is installed,
pydantic models. `codec_for(T)` builds, once per type, a `Codec` that decodes and validates
input bytes (JSON or msgpack, by content type) into `T` and encodes a handler's output. These
are the only conversions a payload goes through inside a runner.

Validation failures raise `ValidationFailedError` whose `field_errors` name each bad field by
JSON path (`$.name`, `$.items[2].size`, `$` for the document itself).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Protocol

import msgspec

from falrt.errors import InvalidArgumentError, ValidationFailedError
from falrt.sdk import files

__all__ = [
    "JSON",
    "MSGPACK",
    "Codec",
    "codec_for",
    "is_model_type",
    "is_msgpack",
    "json_schema",
]

JSON = "application/json"
MSGPACK = "application/msgpack"

_AT_SUFFIX = re.compile(r"^(?P<msg>.*) - at `(?P<loc>\$[^`]*)`$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")

# The hooks only run for types msgspec does not know (falrt.File and falrt.Image).
_json_encoder = msgspec.json.Encoder(enc_hook=files.enc_hook)
_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=files.enc_hook)


def is_msgpack(content_type: str) -> bool:
    """Whether a payload's content type means msgpack. Empty means JSON.

    Raises InvalidArgumentError for any other content type.
    """
    if content_type in ("", JSON):
        return False
    if content_type == MSGPACK:
        return True
    raise InvalidArgumentError(
        f"unsupported content type {content_type!r} (use {JSON!r} or {MSGPACK!r})"
    )


def _pydantic_base() -> type[Any] | None:
    """pydantic.BaseModel if pydantic was imported by anyone, else None (never imports it)."""
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


def is_pydantic_model(tp: object) -> bool:
    """Whether `tp` is a pydantic model class."""
    base = _pydantic_base()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def is_model_type(tp: object) -> bool:
    """Whether `tp` can be an endpoint input or output type (Struct or pydantic model)."""
    return (isinstance(tp, type) and issubclass(tp, msgspec.Struct)) or is_pydantic_model(tp)


def json_schema(tp: type[Any], output: bool = False) -> dict[str, Any]:
    """The JSON Schema of a model type, as an input or (`output`) as an output: they differ
    for falrt.File fields (a URL string in, fal's file object out)."""
    if is_pydantic_model(tp):
        schema: dict[str, Any] = tp.model_json_schema(
            mode="serialization" if output else "validation")
        return schema
    hook = files.output_schema_hook if output else files.input_schema_hook
    return msgspec.json.schema(tp, schema_hook=hook)


class Codec(Protocol):
    """Decodes input payloads into one type and encodes outputs. Stateless, thread-safe."""

    def decode(self, data: bytes, msgpack: bool) -> Any:
        """The validated value; raises ValidationFailedError."""
        ...

    def encode(self, value: Any, msgpack: bool) -> bytes:
        """The payload bytes of an output value; raises TypeError if it cannot be encoded."""
        ...


def _encode_plain(value: Any, msgpack: bool) -> bytes:
    """Encodes anything msgspec can encode (Structs, dicts, lists, ...)."""
    return _msgpack_encoder.encode(value) if msgpack else _json_encoder.encode(value)


def _msgspec_location(message: str) -> tuple[str, str]:
    """Splits a msgspec error message into (JSON path, message without the path)."""
    loc, msg = "$", message
    match = _AT_SUFFIX.match(message)
    if match:
        loc, msg = match["loc"], match["msg"]
    missing = _MISSING.match(msg)
    if missing:
        loc, msg = f"{loc}.{missing['field']}", "field required"
    return loc, msg


class StructCodec:
    """Codec of a msgspec Struct type (decoders built once)."""

    def __init__(self, tp: type[Any]) -> None:
        self._json = msgspec.json.Decoder(tp, dec_hook=files.dec_hook)
        self._msgpack = msgspec.msgpack.Decoder(tp, dec_hook=files.dec_hook)

    def decode(self, data: bytes, msgpack: bool) -> Any:
        try:
            return self._msgpack.decode(data) if msgpack else self._json.decode(data)
        except msgspec.ValidationError as exc:
            loc, msg = _msgspec_location(str(exc))
            raise ValidationFailedError(
                "input failed validation", field_errors=[(loc, msg)]
            ) from None
        except msgspec.DecodeError as exc:
            raise ValidationFailedError(
                "input is not valid " + ("msgpack" if msgpack else "JSON"),
                field_errors=[("$", str(exc))],
            ) from None
        except RecursionError:
            raise _too_deep() from None

    def encode(self, value: Any, msgpack: bool) -> bytes:
        return _encode_plain(value, msgpack)


def _too_deep() -> ValidationFailedError:
    """The error of an input nested deeper than the decoder goes (Python's recursion
    limit): a bad request, not the handler's failure."""
    limit = sys.getrecursionlimit()
    return ValidationFailedError(
        f"input is nested too deeply: at most about {limit} levels of arrays and objects",
        field_errors=[("$", f"nested deeper than about {limit} levels")])


def _pydantic_location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error `loc` as a JSON path: ("items", 2, "size") -> "$.items[2].size"."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


class PydanticCodec:
    """Codec of a pydantic model type."""

    def __init__(self, tp: type[Any]) -> None:
        self._tp = tp
        self._error_type: type[Exception] = sys.modules["pydantic"].ValidationError

    def decode(self, data: bytes, msgpack: bool) -> Any:
        try:
            if msgpack:
                return self._tp.model_validate(self._decode_msgpack(data))
            return self._tp.model_validate_json(data)
        except self._error_type as exc:
            errors: list[dict[str, Any]] = exc.errors()  # type: ignore[attr-defined]
            raise ValidationFailedError(
                "input failed validation",
                field_errors=[(_pydantic_location(tuple(e["loc"])), e["msg"]) for e in errors],
            ) from None
        except RecursionError:
            raise _too_deep() from None

    @staticmethod
    def _decode_msgpack(data: bytes) -> Any:
        try:
            return msgspec.msgpack.decode(data)
        except msgspec.DecodeError as exc:
            raise ValidationFailedError(
                "input is not valid msgpack", field_errors=[("$", str(exc))]
            ) from None

    def encode(self, value: Any, msgpack: bool) -> bytes:
        if not is_pydantic_model(type(value)):
            return _encode_plain(value, msgpack)
        if msgpack:
            return _msgpack_encoder.encode(value.model_dump())
        dumped: str | bytes = value.model_dump_json()
        return dumped.encode() if isinstance(dumped, str) else dumped


def codec_for(tp: type[Any]) -> Codec:
    """The codec of a model type. Raises TypeError for anything else."""
    if is_pydantic_model(tp):
        return PydanticCodec(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return StructCodec(tp)
    raise TypeError(f"{tp!r} is not a msgspec.Struct or pydantic model")
