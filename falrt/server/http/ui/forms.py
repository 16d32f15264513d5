"""An endpoint's input JSON Schema as the fields of the playground's form.

Pure: a schema (what `msgspec.json.schema` or pydantic wrote at deploy) in, a list of
`Field`s out. The page builds one input per field with DOM calls (never HTML text), and
turns the values back into JSON by each field's `kind`. What a form cannot express (nested
objects, unions, lists of objects) becomes a `json` field: a text area whose text is
parsed as JSON, so every input the endpoint takes can still be sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["string", "integer", "number", "boolean", "enum", "json"]
_SCALARS: dict[str, Kind] = {
    "string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
}
_MAX_DEPTH = 20  # $refs followed for one field (a cycle ends as a `json` field)


@dataclass(frozen=True)
class Field:
    """One input of the form. `default` is the schema's default as JSON text ("" for
    none); `choices` the allowed values of an `enum` field, as JSON texts."""

    name: str
    kind: Kind
    required: bool
    title: str
    description: str = ""
    default: str = ""
    choices: tuple[str, ...] = ()
    nullable: bool = False


def form_fields(schema_json: str) -> list[Field] | None:
    """The form of an input schema, in the schema's property order; None when the input
    is not an object with properties (the page then offers one JSON text area)."""
    if not schema_json:
        return None
    try:
        schema = json.loads(schema_json)
    except ValueError:
        return None
    if not isinstance(schema, dict):
        return None
    defs = _defs(schema)
    root = _resolve(schema, defs)
    properties = root.get("properties")
    if root.get("type") != "object" or not isinstance(properties, dict) or not properties:
        return None
    required = set(root.get("required") or ())
    return [_field(name, prop, name in required, defs)
            for name, prop in properties.items() if isinstance(prop, dict)]


def _field(name: str, prop: Mapping[str, Any], required: bool,
           defs: Mapping[str, Any]) -> Field:
    resolved, nullable = _unwrap_optional(_resolve(prop, defs), defs)
    title = str(prop.get("title") or name)  # (a $ref's title names its type)
    description = str(prop.get("description") or resolved.get("description") or "")
    default = json.dumps(prop["default"]) if "default" in prop else ""
    kind, choices = _kind(resolved)
    return Field(name=name, kind=kind, required=required, title=title,
                 description=description, default=default, choices=choices,
                 nullable=nullable)


def _kind(schema: Mapping[str, Any]) -> tuple[Kind, tuple[str, ...]]:
    values = schema.get("enum")
    if isinstance(values, list) and values:
        return "enum", tuple(json.dumps(v) for v in values)
    if "const" in schema:
        return "enum", (json.dumps(schema["const"]),)
    type_name = schema.get("type")
    kind = _SCALARS.get(type_name) if isinstance(type_name, str) else None
    return (kind or "json"), ()


def _unwrap_optional(schema: Mapping[str, Any], defs: Mapping[str, Any]
                     ) -> tuple[Mapping[str, Any], bool]:
    """`X | None` (anyOf with a null, or a type list with "null") as (X, True)."""
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1 and len(rest) < len(options) and isinstance(rest[0], dict):
                return _resolve(rest[0], defs), True
    types = schema.get("type")
    if isinstance(types, list) and "null" in types:
        others = [t for t in types if t != "null"]
        if len(others) == 1:
            return {**schema, "type": others[0]}, True
    return schema, False


def _defs(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    found = schema.get("$defs") or schema.get("definitions") or {}
    return found if isinstance(found, dict) else {}


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` with local `$ref`s (`#/$defs/NAME`, `#/definitions/NAME`) followed."""
    for _ in range(_MAX_DEPTH):
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return schema
        target = defs.get(ref.rpartition("/")[2])
        if not isinstance(target, dict):
            return {}
        schema = target
    return {}
