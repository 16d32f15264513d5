"""Which check of its input schema the server may apply to an endpoint's inputs at the edge
(falrt/server/queue/input_check.py), chosen so that it never refuses what the runner's
decoder (falrt/sdk/codec.py) accepts:

- a msgspec Struct decodes exactly what its schema says: EXACT;
- a pydantic model in its default lax mode coerces scalars ("3" to 3, 1 to True): SHAPE,
  objects, arrays, required and unknown fields only;
- a pydantic model (or a model inside it) whose validators run before pydantic's own
  (`mode="before"`, `"wrap"`, `"plain"`, `BeforeValidator`...) may turn any input into a valid
  one, and one that takes fields by name as well as by alias accepts names its schema does
  not list: NONE.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec

from falrt.sdk.codec import is_pydantic_model
from falrt.vocabulary import InputCheck

__all__ = ["input_check_for"]

_TRANSFORMING_MODES = frozenset({"before", "wrap", "plain"})
_TRANSFORMING_VALIDATORS = frozenset({"BeforeValidator", "WrapValidator", "PlainValidator"})


def input_check_for(tp: type[Any]) -> InputCheck:
    """The edge check of inputs decoded into `tp`."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return InputCheck.EXACT
    if is_pydantic_model(tp):
        return InputCheck.NONE if _transforms_input(tp, set()) else InputCheck.SHAPE
    return InputCheck.NONE


def _transforms_input(model: type[Any], seen: set[type[Any]]) -> bool:
    """Whether a pydantic model, or one of the models its fields hold, has validators that
    run before pydantic's own or takes fields by name beside their aliases."""
    if model in seen:
        return False
    seen.add(model)
    config = getattr(model, "model_config", {}) or {}
    if config.get("populate_by_name") or config.get("validate_by_name"):
        return True
    decorators = getattr(model, "__pydantic_decorators__", None)
    if decorators is not None:
        validators = [*decorators.model_validators.values(),
                      *decorators.field_validators.values()]
        if any(getattr(v.info, "mode", "after") in _TRANSFORMING_MODES for v in validators):
            return True
    for field in getattr(model, "model_fields", {}).values():
        if _any_transforming(field.metadata) or _annotation_transforms(field.annotation, seen):
            return True
    return False


def _any_transforming(metadata: Any) -> bool:
    return any(type(item).__name__ in _TRANSFORMING_VALIDATORS for item in metadata)


def _annotation_transforms(annotation: Any, seen: set[type[Any]]) -> bool:
    """Whether a field's type holds a model (or an Annotated validator) that transforms."""
    if is_pydantic_model(annotation) or hasattr(annotation, "__pydantic_decorators__"):
        return _transforms_input(annotation, seen)
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        return _any_transforming(metadata) or _annotation_transforms(base, seen)
    return any(_annotation_transforms(arg, seen) for arg in typing.get_args(annotation))
