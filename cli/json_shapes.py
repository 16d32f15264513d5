"""The one conversion from the server's protobuf messages to the CLI's `--output json`.

The shapes are documented in docs/cli-json.md and stable; protobuf's own JSON mapping is not
used because it leaks its conventions into scripts. Every message becomes an object keyed by
the proto's field names, with:

- integers (int64 included) as JSON numbers, floats as numbers, booleans as booleans;
- enums as the lower-case words the CLI's flags take (`RUNNER_STATE_IDLE` → `"idle"`,
  `ENDPOINT_KIND_STREAM` → `"stream"`), and `null` for the unspecified value;
- timestamps as ISO 8601 strings in UTC (`"2026-12-03T08:31:46.123456Z"`), `null` when unset;
- durations as seconds (a number);
- JSON carried as text (fields named `*_json`, e.g. `input_schema_json`) as the nested JSON
  value, under the name without `_json` (`input_schema`);
- optional fields that are unset, and unset message fields, as `null`; repeated fields as
  arrays; maps as objects.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

_JSON_SUFFIX = "_json"


def message_json(message: Message) -> dict[str, Any]:
    """`message` as the documented plain-JSON object (see the module's docstring)."""
    shaped: dict[str, Any] = {}
    field: Any
    for field in message.DESCRIPTOR.fields:
        name, value = field.name, _field_value(message, field)
        if field.type == FieldDescriptor.TYPE_STRING and name.endswith(_JSON_SUFFIX):
            name, value = name.removesuffix(_JSON_SUFFIX), _parsed(value)
        shaped[name] = value
    return shaped


def messages_json(messages: Any) -> list[dict[str, Any]]:
    """Each of `messages` as `message_json` shapes it."""
    return [message_json(m) for m in messages]


def enum_word(enum: EnumDescriptor, number: int) -> str | None:
    """An enum value as the lower-case word the flags take (`None`: unspecified or unknown)."""
    value = enum.values_by_number.get(number)
    if value is None or number == 0:
        return None
    prefix = _upper_snake(enum.name) + "_"
    return value.name.removeprefix(prefix).lower()


def timestamp_json(timestamp: Timestamp) -> str | None:
    """ISO 8601 in UTC with a `Z`, microseconds when there are any; `None` when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return None
    return timestamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _field_value(message: Message, field: Any) -> Any:
    value = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {str(k): _single(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_single(field, v) for v in value]
    if field.has_presence and not message.HasField(field.name):
        return None
    return _single(field, value)


def _single(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_word(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if isinstance(value, Timestamp):
        return timestamp_json(value)
    if isinstance(value, Duration):
        return value.seconds + value.nanos / 1e9
    return message_json(value)


def _parsed(text: str) -> Any:
    """JSON text as its value; `None` for empty text (and text that is not JSON stays text)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _upper_snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()
