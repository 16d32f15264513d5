"""Payload encoding: the client encodes arguments once and decodes outputs once."""

from __future__ import annotations

from typing import Any

import msgspec

from falrt.errors import InvalidArgumentError
from falrt.v1 import common_pb2

JSON = "application/json"
MSGPACK = "application/msgpack"

_ENCODER = msgspec.json.Encoder(enc_hook=lambda obj: _to_builtins(obj))


def _to_builtins(obj: Any) -> Any:
    """Lets objects with a `model_dump()` (pydantic models) be passed as arguments."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


def encode_arguments(arguments: Any) -> common_pb2.Payload:
    """`arguments` (dict, list, msgspec Struct, dataclass, ...) as a JSON payload.

    Raises `InvalidArgumentError` for values JSON cannot hold.
    """
    try:
        data = _ENCODER.encode(arguments)
    except (TypeError, NotImplementedError) as exc:
        raise InvalidArgumentError(f"arguments are not JSON-serializable: {exc}") from exc
    return common_pb2.Payload(data=data, content_type=JSON)


def decode_payload(payload: common_pb2.Payload) -> Any:
    """The value a payload holds: JSON or msgpack decoded, other content types as bytes.

    An empty payload decodes to None.
    """
    if not payload.data:
        return None
    if payload.content_type in ("", JSON):
        return msgspec.json.decode(payload.data)
    if payload.content_type == MSGPACK:
        return msgspec.msgpack.decode(payload.data)
    return payload.data
