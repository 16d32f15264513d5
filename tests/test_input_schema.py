"""The edge's input check, in-process: which check the SDK chooses per input model, what
each check applies of a schema, and the property the design rests on: the edge never refuses
an input the runner's decoder accepts (hypothesis, over inputs near and far from valid)."""

from __future__ import annotations

import datetime
import decimal
from typing import Annotated, Any, Literal

import msgspec
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from falrt.errors import ValidationFailedError
from falrt.sdk.codec import codec_for, json_schema
from falrt.sdk.input_check import input_check_for
from falrt.server.queue.input_check import MAX_CHECKED_BYTES, compile_check, edge_schema
from falrt.vocabulary import InputCheck

pytestmark = pytest.mark.unit


class Size(msgspec.Struct):
    width: Annotated[int, msgspec.Meta(ge=1)]
    height: int = 1


class Job(msgspec.Struct):
    prompt: str
    steps: int = 20
    scale: float = 7.5
    seed: int | None = None
    mode: Literal["fast", "slow"] = "fast"
    price: decimal.Decimal = decimal.Decimal(0)
    tags: set[str] = set()
    size: Size | None = None
    when: datetime.datetime | None = None
    sizes: list[Size] = []


class PSize(pydantic.BaseModel):
    width: int = pydantic.Field(ge=1)
    height: int = 1


class PJob(pydantic.BaseModel):
    prompt: str
    steps: int = 20
    scale: float = 7.5
    seed: int | None = None
    mode: Literal["fast", "slow"] = "fast"
    price: decimal.Decimal = decimal.Decimal(0)
    tags: set[str] = set()
    size: PSize | None = None
    when: datetime.datetime | None = None
    sizes: list[PSize] = []


class Squashed(pydantic.BaseModel):
    prompt: str

    @pydantic.model_validator(mode="before")
    @classmethod
    def from_text(cls, value: Any) -> Any:
        return {"prompt": value} if isinstance(value, str) else value


class HoldsSquashed(pydantic.BaseModel):
    inner: list[Squashed]


class ByName(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    prompt: str = pydantic.Field(alias="text")


class Stripped(pydantic.BaseModel):
    prompt: Annotated[str, pydantic.BeforeValidator(str.strip)]


def _check(tp: type[Any]) -> Any:
    schema = msgspec.json.encode(json_schema(tp)).decode()
    run = compile_check(schema, input_check_for(tp), tp.__name__)
    assert run is not None
    return run


def _refusal(run: Any, value: Any) -> list[tuple[str, str]] | None:
    try:
        run(msgspec.json.encode(value))
    except ValidationFailedError as exc:
        return list(exc.field_errors)
    return None


def test_msgspec_structs_get_the_exact_check_and_pydantic_models_the_shape() -> None:
    assert input_check_for(Job) is InputCheck.EXACT
    assert input_check_for(PJob) is InputCheck.SHAPE


@pytest.mark.parametrize("model", [Squashed, HoldsSquashed, ByName, Stripped])
def test_models_whose_validators_transform_input_are_not_checked_at_the_edge(
    model: type[Any],
) -> None:
    assert input_check_for(model) is InputCheck.NONE


def test_the_exact_check_names_each_bad_field_as_the_runner_does() -> None:
    run = _check(Job)
    assert _refusal(run, {"prompt": "x", "steps": 3}) is None
    assert _refusal(run, {"steps": 3}) == [("$.prompt", "field required")]
    errors = _refusal(run, {"prompt": "x", "steps": "3", "sizes": [{"width": 0}]})
    assert errors is not None
    assert sorted(loc for loc, _ in errors) == ["$.sizes[0].width", "$.steps"]
    assert _refusal(run, {"prompt": "x", "mode": "medium"}) is not None


def test_the_shape_check_leaves_scalars_to_pydantic() -> None:
    run = _check(PJob)
    assert _refusal(run, {"prompt": 5, "steps": "3", "mode": "medium"}) is None
    assert _refusal(run, {"steps": 3}) == [("$.prompt", "field required")]
    assert _refusal(run, {"prompt": "x", "size": [1, 2]}) is not None  # an object goes there
    assert _refusal(run, ["prompt"]) is not None


def test_malformed_json_is_refused_with_the_runners_message() -> None:
    run = _check(Job)
    with pytest.raises(ValidationFailedError, match="input is not valid JSON"):
        run(b'{"prompt": ')


def test_inputs_over_the_size_limit_are_left_to_the_runner() -> None:
    run = _check(Job)
    big = b'{"steps": 1, "pad": "' + b"x" * MAX_CHECKED_BYTES + b'"}'
    run(big)  # missing `prompt`, but not checked here


def test_keywords_that_could_refuse_more_once_relaxed_are_dropped() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "string"}], "not": {"type": "null"},
              "uniqueItems": True, "type": "string", "format": "decimal"}
    exact = edge_schema(schema, InputCheck.EXACT)
    assert exact == {"anyOf": [{"type": "integer"}, {"type": "string"}],
                     "type": ["string", "number"], "format": "decimal"}
    assert edge_schema(schema, InputCheck.SHAPE) == {"anyOf": [{}, {}]}


def test_an_unusable_schema_means_no_edge_check() -> None:
    assert compile_check("not json", InputCheck.EXACT, "test") is None
    assert compile_check('{"$ref": "#/$defs/Missing"}', InputCheck.EXACT, "test") is None
    assert compile_check('{"type": "object"}', InputCheck.NONE, "test") is None
    assert compile_check('{"properties": [1]}', InputCheck.EXACT, "test") is None


# Inputs near valid ones: the fields of the models with values of every JSON kind.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["3", "1.5", "fast", "slow", "2026-12-03T10:00:00Z", "true", ""]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["width", "height", "x"]), inner, max_size=3)),
    max_leaves=6,
)
_ints = st.one_of(st.integers(-3, 50), st.sampled_from(["3", 2.0, True, "x"]))
_sizes = st.fixed_dictionaries({"width": _ints}, optional={"height": _ints, "x": _values})
_likely = {  # values each field's type takes, with near misses
    "steps": _ints, "scale": st.one_of(_ints, st.floats(-1e3, 1e3), st.just("1.5")),
    "seed": st.one_of(st.none(), _ints), "mode": st.sampled_from(["fast", "slow", "medium"]),
    "price": st.one_of(_ints, st.just("1.25"), st.just(0.5)),
    "tags": st.lists(st.sampled_from(["a", "b", 1]), max_size=3),
    "size": st.one_of(st.none(), _sizes),
    "when": st.sampled_from([None, "2026-12-03T10:00:00Z", 1_700_000_000, "noon"]),
    "sizes": st.lists(_sizes, max_size=2), "extra": _values,
}
_field = st.one_of([st.tuples(st.just(name), st.one_of(likely, likely, _values))
                    for name, likely in _likely.items()])
_near_valid = st.builds(  # a prompt and one or two other fields
    lambda prompt, fields: {"prompt": prompt, **dict(fields)},
    st.one_of(st.text(max_size=5), st.text(max_size=5), _scalars),
    st.lists(_field, max_size=2),
)
_inputs = st.one_of(_near_valid, _near_valid, _near_valid, _values)


@pytest.mark.parametrize("model", [Job, PJob])
@settings(max_examples=500, deadline=None)  # (a few microseconds each)
@given(value=_inputs)
def test_the_edge_never_refuses_what_the_runner_accepts(model: type[Any], value: Any) -> None:
    data = msgspec.json.encode(value)
    try:
        codec_for(model).decode(data, msgpack=False)
    except ValidationFailedError:
        return  # refused by the runner: the edge may refuse it or not
    assert _refusal(_check(model), value) is None, (
        f"the edge refuses {value!r}, which the runner's decoder accepts")
