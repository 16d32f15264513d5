"""The edge's input check: a JSON input is checked against its endpoint's input schema when
it arrives (Submit, Run, Stream, and the HTTP routes that call them), so a bad input fails
at once, with the fields at fault, even while the app has no runner that could say so.

The runner's own validation stays the last word: the check here never refuses an input the
runner would accept. How much of the schema it applies is chosen by the SDK at deploy, per
endpoint (`InputCheck`, falrt/sdk/input_check.py): all of it for msgspec Structs, the shape
(objects, arrays, required and unknown fields) for pydantic models, whose lax mode coerces
scalars, and nothing for models whose validators transform their input.

A schema is compiled once per revision (jsonschema-rs, Draft 2020-12, formats not checked:
the decoders accept what `format` does not describe). Inputs in msgpack and inputs larger
than `MAX_CHECKED_BYTES` go to the runner unchecked: the check decodes the input, and a
large one would hold the event loop for milliseconds (bench/validation.py measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema_rs
import msgspec

from falrt import errors
from falrt.store.records import Revision
from falrt.vocabulary import InputCheck

log = logging.getLogger(__name__)

# Larger inputs are checked by the runner only: the check costs about 4-6 ms per MiB of
# input on the event loop (bench/validation.py), so at most about 1.5 ms per input here.
MAX_CHECKED_BYTES = 256 << 10
# At most this many field errors are reported (the runner's validators report one or all).
MAX_FIELD_ERRORS = 10
# The scalar types pydantic's lax mode converts between ("3" to 3, 1 to True, 1.7e9 to a
# datetime): the shape check leaves them out. `null` stays: only null is None.
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean"})
# Keywords that only constrain scalars' values (the shape check drops them), and those that
# could turn a relaxed sub-schema into a stricter one (`not`, `if`), dropped by both checks.
_VALUE_KEYWORDS = ("enum", "const", "format", "pattern", "minimum", "maximum",
                   "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                   "maxLength")
_INVERTING_KEYWORDS = ("not", "if", "then", "else")
_decode = msgspec.json.Decoder().decode

Check = Callable[[bytes], None]


def edge_schema(schema: Any, check: InputCheck) -> Any:
    """The part of `schema` the edge applies under `check`: never stricter than the decoder
    the SDK chose `check` for.

    Both checks drop `not`/`if`/`then`/`else`, turn `oneOf` into `anyOf` (a relaxed branch
    may match twice), drop `uniqueItems` (a set field takes an array with duplicates) and
    let a `decimal` string be a number too (msgspec decodes numbers into Decimal). The shape
    check also drops the scalar types but null, and every keyword about a scalar's value."""
    if isinstance(schema, list):
        return [edge_schema(item, check) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        _keep(out, key, value, check)
    if schema.get("format") == "decimal" and out.get("type") == "string":
        out["type"] = ["string", "number"]
    if check is InputCheck.SHAPE and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if any(t in _SCALAR_TYPES for t in types):
            del out["type"]
    return out


def _keep(out: dict[str, Any], key: str, value: Any, check: InputCheck) -> None:
    """Puts keyword `key` of a schema object into `out` as `edge_schema` keeps it."""
    if key in _INVERTING_KEYWORDS or key == "uniqueItems":
        return
    if check is InputCheck.SHAPE and key in _VALUE_KEYWORDS:
        return
    if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
        out[key] = {name: edge_schema(sub, check) for name, sub in value.items()}
    elif key == "oneOf":
        out["anyOf"] = edge_schema(value, check)
    else:
        out[key] = edge_schema(value, check)


def compile_check(
    schema_json: str, check: InputCheck, what: str, max_bytes: int = MAX_CHECKED_BYTES
) -> Check | None:
    """The check of one endpoint's inputs up to `max_bytes` (None: inputs are not checked
    at the edge). A schema that does not compile is logged and not applied (the runner
    still validates)."""
    if check is InputCheck.NONE or not schema_json:
        return None
    try:
        schema = edge_schema(msgspec.json.decode(schema_json), check)
        validator = jsonschema_rs.validator_for(schema, validate_formats=False)
    except (msgspec.DecodeError, ValueError, TypeError, AttributeError,
            jsonschema_rs.ReferencingError) as exc:
        log.warning("the input schema of %s does not compile (%s); its inputs are checked "
                    "by its runners only", what, exc)
        return None

    def run(data: bytes) -> None:
        if len(data) > max_bytes:
            return
        try:
            value = _decode(data)
        except msgspec.DecodeError as exc:
            if check is InputCheck.SHAPE and (b"NaN" in data or b"Infinity" in data):
                return  # pydantic's parser takes these; msgspec's does not
            raise errors.ValidationFailedError(
                "input is not valid JSON", field_errors=[("$", str(exc))]) from None
        except RecursionError:
            return  # deeper than the decoder goes: the runner says so
        try:
            found = list(_first(validator.iter_errors(value), MAX_FIELD_ERRORS))
        except ValueError:  # nested deeper than the validator goes
            return
        if found:
            raise errors.ValidationFailedError(
                "input failed validation", field_errors=[_field_error(e) for e in found])

    return run


def _first(items: Iterator[Any], count: int) -> Iterator[Any]:
    for index, item in enumerate(items):
        if index == count:
            return
        yield item


def _field_error(error: Any) -> tuple[str, str]:
    """A validation error as the runner names it: a JSON path and a message; a missing
    field is `$.parent.field`: "field required"."""
    location = "$" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.instance_path)
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        return f"{location}.{kind.property}", "field required"
    return location, error.message


class InputChecks:
    """The compiled checks of one revision's endpoints, by path, compiled on first use."""

    def __init__(self, revision_id: str, endpoints: dict[str, tuple[str, InputCheck]]) -> None:
        self.revision_id = revision_id
        self._sources = endpoints
        self._compiled: dict[str, Check | None] = {}

    @classmethod
    def of(cls, revision: Revision) -> InputChecks:
        return cls(revision.revision_id, {
            e.path: (e.input_schema_json, InputCheck.from_number(e.input_check))
            for e in revision.endpoints})

    def check(self, path: str, data: bytes, content_type: str) -> None:
        """Raises ValidationFailedError when a JSON input to `path` fails its check."""
        if content_type not in ("", "application/json"):
            return  # msgpack (and anything else) is the runner's to check
        try:
            run = self._compiled[path]
        except KeyError:
            schema_json, check = self._sources.get(path, ("", InputCheck.NONE))
            run = self._compiled[path] = compile_check(
                schema_json, check, f"{path} of revision {self.revision_id}")
        if run is not None:
            run(data)
