"""The OpenAPI builder (`falrt/openapi.py`): valid documents that name every endpoint's
fields, with each schema's `$defs` moved into components and every `$ref` resolving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

import msgspec
import pydantic
import pytest
from openapi_spec_validator import validate

import falrt
from falrt import openapi
from falrt.sdk.endpoints import EndpointKind
from falrt.sdk.spec import describe
from falrt.store.records import EndpointRecord
from falrt.vocabulary import AppAuth

pytestmark = pytest.mark.unit
T = TypeVar("T")


class Size(msgspec.Struct):
    width: int
    height: int


class Prompt(msgspec.Struct):
    prompt: str
    size: Size
    steps: int = 20


class Image(msgspec.Struct):
    url: str
    size: Size


class Token(msgspec.Struct):
    text: str


class Painter(falrt.App):
    app_name = "painter"

    @falrt.endpoint("/")
    def paint(self, prompt: Prompt) -> Image:
        raise NotImplementedError

    @falrt.endpoint("/stream")
    def tokens(self, prompt: Prompt) -> Iterator[Token]:
        raise NotImplementedError
        yield

    @falrt.endpoint("/realtime", realtime=True)
    async def live(self, prompts: AsyncIterator[Prompt]) -> AsyncIterator[Image]:
        raise NotImplementedError
        yield


def records(cls: type[falrt.App]) -> list[EndpointRecord]:
    return [EndpointRecord(e.path, e.name, EndpointKind(e.kind).number, e.input_schema_json,
                           e.output_schema_json) for e in describe(cls).endpoints]


def endpoint(path: str, name: str, input_schema: Any, output_schema: Any,
             kind: EndpointKind = EndpointKind.UNARY) -> EndpointRecord:
    return EndpointRecord(path, name, kind.number, json.dumps(input_schema),
                          json.dumps(output_schema))


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def check(document: dict[str, Any]) -> None:
    """Valid OpenAPI, no `$defs` left, and every `$ref` resolves inside the document."""
    validate(document)
    assert not [k for k, _ in walk(document) if k in ("$defs", "definitions")]
    for key, ref in walk(document):
        if key == "$ref":
            resolve(document, ref)


def deref(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = resolve(document, schema["$ref"]) if "$ref" in schema else schema
    return found


def schema_of(document: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    """The schema of a media type object, its `$ref` followed."""
    return deref(document, content["schema"])


def test_the_document_of_an_app_validates_and_names_each_endpoints_fields() -> None:
    document = openapi.build("alice/painter", records(Painter), version="rev-1",
                             server_url="https://gw.example:8443/")
    check(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "alice/painter"
    assert document["info"]["version"] == "rev-1"
    assert document["servers"] == [{"url": "https://gw.example:8443"}]
    paint = document["paths"]["/alice/painter"]["post"]
    body = schema_of(document, paint["requestBody"]["content"]["application/json"])
    assert set(body["properties"]) == {"prompt", "size", "steps"}
    assert body["required"] == ["prompt", "size"]
    size = resolve(document, body["properties"]["size"]["$ref"])
    assert set(size["properties"]) == {"width", "height"}
    output = schema_of(document, paint["responses"]["200"]["content"]["application/json"])
    assert set(output["properties"]) == {"url", "size"}


def test_each_endpoint_has_its_direct_and_queue_paths_and_a_stream_answers_events() -> None:
    document = openapi.build("alice/painter", records(Painter))
    paths = document["paths"]
    assert {"/alice/painter", "/alice/painter/stream", "/queue/alice/painter",
            "/queue/alice/painter/stream"} <= set(paths)
    assert set(paths["/alice/painter"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/msgpack"}
    assert set(paths["/alice/painter/stream"]["post"]["requestBody"]["content"]) == {
        "application/json"}  # (server-sent events carry JSON)
    stream = paths["/alice/painter/stream"]["post"]["responses"]["200"]["content"]
    assert set(schema_of(document, stream["text/event-stream"])["properties"]) == {"text"}
    submitted = paths["/queue/alice/painter"]["post"]["responses"]["200"]["content"]
    assert set(schema_of(document, submitted["application/json"])["properties"]) == {
        "request_id", "response_url", "status_url", "cancel_url", "queue_position"}
    base = "/queue/alice/painter/requests/{request_id}"
    assert set(paths[f"{base}/status"]["get"]["responses"]) >= {"200", "202"}
    assert "text/event-stream" in (
        paths[f"{base}/status/stream"]["get"]["responses"]["200"]["content"])
    assert set(paths[f"{base}/cancel"]["put"]["responses"]) >= {"202", "400", "404"}
    result = paths[base]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in result["oneOf"]} == {"Image", "Token"}


def test_a_realtime_endpoint_is_a_websocket_path_with_no_http_operation() -> None:
    document = openapi.build("alice/painter", records(Painter))
    item = document["paths"]["/alice/painter/realtime"]
    assert not {"get", "post", "put", "delete"} & set(item)
    socket = item["x-falrt-websocket"]
    assert resolve(document, socket["input"]["$ref"])["title"] == "Prompt"
    assert "/queue/alice/painter/realtime" not in document["paths"]


def test_two_different_models_of_one_name_get_two_names_and_their_users_follow() -> None:
    first = {"$ref": "#/$defs/Outer", "$defs": {
        "Outer": {"type": "object", "properties": {"inner": {"$ref": "#/$defs/Inner"}}},
        "Inner": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    second = {"$ref": "#/$defs/Outer", "$defs": {
        "Outer": {"type": "object", "properties": {"inner": {"$ref": "#/$defs/Inner"}}},
        "Inner": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    same = {"$ref": "#/$defs/Inner", "$defs": first["$defs"]}
    document = openapi.build("alice/two", [
        endpoint("/one", "one", first, same), endpoint("/two", "two", second, same)])
    check(document)
    one = document["paths"]["/alice/two/one"]["post"]["requestBody"]["content"]
    two = document["paths"]["/alice/two/two"]["post"]["requestBody"]["content"]
    first_inner = deref(document, schema_of(document, one["application/json"])
                        ["properties"]["inner"])
    second_inner = deref(document, schema_of(document, two["application/json"])
                         ["properties"]["inner"])
    assert set(first_inner["properties"]) == {"a"}
    assert set(second_inner["properties"]) == {"b"}
    schemas = document["components"]["schemas"]
    assert {"Outer", "Outer2", "Inner", "Inner2"} <= set(schemas)
    assert not {"Outer3", "Inner3"} & set(schemas)  # equal models share one name


def test_a_pydantic_models_schema_is_hoisted_with_its_defs() -> None:
    class Style(pydantic.BaseModel):
        name: str

    class Request(pydantic.BaseModel):
        prompt: str
        styles: list[Style]

    document = openapi.build("alice/py", [endpoint(
        "/", "generate", Request.model_json_schema(), Style.model_json_schema())])
    check(document)
    content = document["paths"]["/alice/py"]["post"]["requestBody"]["content"]
    request = schema_of(document, content["application/json"])
    assert set(request["properties"]) == {"prompt", "styles"}
    style = resolve(document, request["properties"]["styles"]["items"]["$ref"])
    assert set(style["properties"]) == {"name"}


def test_a_generic_models_name_becomes_a_valid_component_name() -> None:
    class Page(pydantic.BaseModel, Generic[T]):
        items: list[T]

    document = openapi.build("alice/pages", [endpoint(
        "/", "list", Page[int].model_json_schema(), Page[str].model_json_schema())])
    check(document)  # component names may hold only letters, digits, ".", "-" and "_"
    assert {"Page_int_", "Page_str_"} <= set(document["components"]["schemas"])


def test_an_app_model_named_like_a_gateway_model_is_renamed() -> None:
    mine = {"type": "object", "title": "QueueStatus", "properties": {"mine": {"type": "string"}}}
    document = openapi.build("alice/q", [endpoint("/", "run", mine, mine)])
    check(document)
    schemas = document["components"]["schemas"]
    assert "request_id" in schemas["QueueStatus"]["properties"]
    assert set(schemas["QueueStatus2"]["properties"]) == {"mine"}


def test_a_public_app_needs_no_key_and_a_private_one_does() -> None:
    public = openapi.build("alice/painter", records(Painter), auth=AppAuth.PUBLIC)
    private = openapi.build("alice/painter", records(Painter), auth=AppAuth.PRIVATE)
    scheme = private["components"]["securitySchemes"]["Key"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert public["security"] == [{}, {"Key": []}]
    assert private["security"] == [{"Key": []}]
    assert "servers" not in private


def test_a_schema_that_is_not_json_is_described_as_any_value() -> None:
    broken = EndpointRecord("/", "run", EndpointKind.UNARY.number, "not json", "")
    document = openapi.build("alice/broken", [broken])
    check(document)
    content = document["paths"]["/alice/broken"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {}
