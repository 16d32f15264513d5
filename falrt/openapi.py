"""An app's OpenAPI 3.1 document, built from its endpoints' JSON Schemas.

Pure: no I/O and nothing of the server, so the server (`GET /{owner}/{app}/openapi.json`)
and the CLI (`falrt apps openapi APP`) build the same document from the same description:
the endpoints as a revision stores them (`EndpointRecord`) or as Control.GetApp returns
them (`EndpointSpec`), which share their field names (`Endpoint` below).

The layout (docs/http.md):
- per unary or streaming endpoint, the direct call `POST /{owner}/{app}{path}` (a stream
  answers `text/event-stream`, one output per `data:` event) and the queue submit
  `POST /queue/{owner}/{app}{path}`; the queue's status, status stream, result and cancel
  paths once;
- per realtime endpoint, a path item with no operation (OpenAPI has none for WebSockets)
  and an `x-falrt-websocket` extension naming its input and output schemas;
- every model under `components/schemas`: each schema's `$defs` moved there and its
  `$ref`s rewritten; a name two different models share gets a numbered suffix;
- the security scheme `Key` (`Authorization: Key KEY_ID:SECRET`), optional for public apps.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from falrt.sdk.endpoints import EndpointKind
from falrt.vocabulary import AppAuth

__all__ = ["OPENAPI_VERSION", "Endpoint", "build"]

OPENAPI_VERSION = "3.1.0"
JSON, MSGPACK = "application/json", "application/msgpack"
_REF_PREFIXES = ("#/$defs/", "#/definitions/")
_COMPONENTS = "#/components/schemas/"
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9._-]")
Schema = dict[str, Any]


class Endpoint(Protocol):
    """What the builder reads of an endpoint (EndpointRecord and EndpointSpec have it)."""

    @property
    def path(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def input_schema_json(self) -> str: ...
    @property
    def output_schema_json(self) -> str: ...


def build(
    endpoint_id: str, endpoints: Sequence[Endpoint], *, auth: str = AppAuth.PRIVATE,
    version: str = "", server_url: str = "",
) -> dict[str, Any]:
    """The OpenAPI document of the app `endpoint_id` ("owner/app").

    `version` is the revision id; `server_url`, when given, is the document's one server
    (the gateway's URL). An endpoint schema that is not JSON is described as any value.
    """
    components = _Components()
    paths: dict[str, Any] = {}
    queued: list[Schema] = []
    for endpoint in sorted(endpoints, key=lambda e: e.path):
        kind = _kind(endpoint.kind)
        tag = _tag(endpoint.name)
        body = components.add(endpoint.input_schema_json, f"{tag}Input")
        output = components.add(endpoint.output_schema_json, f"{tag}Output")
        url = f"/{endpoint_id}{_suffix(endpoint.path)}"
        if kind is EndpointKind.REALTIME:
            paths[url] = _websocket(endpoint, body, output)
            continue
        paths[url] = {"post": _direct(endpoint, kind, body, output)}
        paths[f"/queue{url}"] = {"post": _submit(endpoint, body)}
        queued.append(output)
    if queued:
        paths.update(_queue_paths(endpoint_id, queued))
    return _document(endpoint_id, paths, components.schemas, auth, version, server_url)


def _document(
    endpoint_id: str, paths: dict[str, Any], schemas: dict[str, Schema], auth: str,
    version: str, server_url: str,
) -> dict[str, Any]:
    key_scheme = {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": "`Key KEY_ID:SECRET` (`falrt keys create` makes keys)",
    }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": endpoint_id, "version": version or "0",
            "description": f"The endpoints of the falrt app {endpoint_id} ({auth}).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": copy.deepcopy(_ERROR_RESPONSES),
            "securitySchemes": {"Key": key_scheme},
        },
        # A public app answers without a key; the empty requirement says so.
        "security": [{}, {"Key": []}] if auth == AppAuth.PUBLIC else [{"Key": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url.rstrip("/")}]
    return document


def _kind(number: int) -> EndpointKind:
    try:
        return EndpointKind.from_number(number)
    except ValueError:
        return EndpointKind.UNARY


def _suffix(path: str) -> str:
    return "" if path == "/" else path


def _tag(name: str) -> str:
    """A schema-name prefix for an endpoint: its method name in CamelCase."""
    words = [w for w in name.replace("-", "_").split("_") if w] or ["root"]
    return "".join(w[:1].upper() + w[1:] for w in words)


# -- operations ---------------------------------------------------------------------

def _ref(name: str) -> Schema:
    return {"$ref": _COMPONENTS + name}


def _content(schema: Schema, *, msgpack: bool = True) -> dict[str, Any]:
    """A payload's media types: JSON, and msgpack (the same model) where the route takes it."""
    content = {JSON: {"schema": schema}}
    if msgpack:
        content[MSGPACK] = {"schema": schema}
    return content


def _body(schema: Schema, *, msgpack: bool = True) -> dict[str, Any]:
    return {"required": True, "content": _content(schema, msgpack=msgpack)}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/{_ERROR_NAMES[status]}"}
            for status in statuses}


def _direct(endpoint: Endpoint, kind: EndpointKind, body: Schema, output: Schema) -> Schema:
    if kind is EndpointKind.STREAM:
        ok = {"description": "The outputs as server-sent events, one per `data:` event, "
              "each JSON of the schema shown", "content": {"text/event-stream": {
                  "schema": output}}}
    else:
        ok = {"description": "The output, in the input's media type",
              "content": _content(output)}
    return {
        "operationId": f"run_{endpoint.name}",
        "summary": f"Call {endpoint.path} ({endpoint.name}) and wait for its "
                   f"{'outputs' if kind is EndpointKind.STREAM else 'output'}",
        "tags": ["direct"],
        "requestBody": _body(body, msgpack=kind is not EndpointKind.STREAM),
        "responses": {"200": ok, **_errors("400", "401", "403", "404", "422", "500")},
    }


def _submit(endpoint: Endpoint, body: Schema) -> Schema:
    return {
        "operationId": f"submit_{endpoint.name}",
        "summary": f"Queue a request to {endpoint.path} ({endpoint.name})",
        "tags": ["queue"],
        "parameters": [
            {"name": "fal_webhook", "in": "query", "required": False,
             "schema": {"type": "string", "format": "uri"},
             "description": "POSTed the result once the request completes"},
            {"name": "fal_max_queue_length", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0},
             "description": "429 when more requests than this are queued"},
        ],
        "requestBody": _body(body),
        "responses": {
            "200": {"description": "Queued", "content": {"application/json": {
                "schema": _ref("QueueSubmitted")}}},
            **_errors("400", "401", "403", "404", "429"),
        },
    }


def _websocket(endpoint: Endpoint, body: Schema, output: Schema) -> Schema:
    return {
        "description": f"Realtime endpoint {endpoint.path} ({endpoint.name}): a WebSocket "
                       "session (GET with `Upgrade: websocket`). Each text frame is one "
                       "JSON input and is answered by text frames; each binary frame one "
                       "msgpack input, answered by binary frames.",
        "x-falrt-websocket": {"input": body, "output": output},
    }


def _queue_paths(endpoint_id: str, outputs: list[Schema]) -> dict[str, Any]:
    base = f"/queue/{endpoint_id}/requests/{{request_id}}"
    request_id = [{"name": "request_id", "in": "path", "required": True,
                   "schema": {"type": "string"}}]
    logs = {"name": "logs", "in": "query", "required": False,
            "schema": {"type": "integer", "enum": [0, 1]}, "description": "1: with logs"}
    unique = [json.loads(s) for s in dict.fromkeys(json.dumps(o, sort_keys=True)
                                                      for o in outputs)]
    result = unique[0] if len(unique) == 1 else {"oneOf": unique}
    status = {"content": {"application/json": {"schema": _ref("QueueStatus")}}}
    return {
        f"{base}/status": {"get": {
            "operationId": "get_status", "tags": ["queue"], "parameters": [*request_id, logs],
            "summary": "A queued request's status",
            "responses": {"200": {"description": "Completed", **status},
                          "202": {"description": "Queued or in progress", **status},
                          **_errors("401", "403", "404")}}},
        f"{base}/status/stream": {"get": {
            "operationId": "stream_status", "tags": ["queue"],
            "parameters": [*request_id, logs],
            "summary": "The request's statuses as server-sent events, until COMPLETED",
            "responses": {"200": {"description": "One QueueStatus per `data:` event",
                                  "content": {"text/event-stream": {
                                      "schema": _ref("QueueStatus")}}},
                          **_errors("401", "403", "404")}}},
        base: {"get": {
            "operationId": "get_result", "tags": ["queue"], "parameters": request_id,
            "summary": "A completed request's output (its error replayed as an error)",
            "responses": {"200": {"description": "The output, in the input's media type",
                                  "content": _content(result)},
                **_errors("400", "401", "403", "404", "500")}}},
        f"{base}/cancel": {"put": {
            "operationId": "cancel", "tags": ["queue"], "parameters": request_id,
            "summary": "Cancel a queued or running request",
            "responses": {
                "202": _cancel("Cancellation requested"),
                "400": _cancel("Already completed"),
                "404": _cancel("No such request"),
                "401": {"$ref": "#/components/responses/Unauthenticated"},
                "403": {"$ref": "#/components/responses/PermissionDenied"}}}},
    }


def _cancel(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["status"], "properties": {"status": {
            "type": "string",
            "enum": ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]}}}}}}


# -- schemas -------------------------------------------------------------------------

class _Components:
    """`components/schemas` as endpoint schemas are added. Each schema's `$defs` are
    hoisted under their own names; a name already taken by a different model is given a
    numbered suffix, and so is every model of the same schema that refers to one renamed
    (its `$ref`s change), so that equal names always mean equal models."""

    def __init__(self) -> None:
        # The gateway's own models first: an app's model of the same name is renamed.
        self.schemas: dict[str, Schema] = copy.deepcopy(_SHARED_SCHEMAS)

    def add(self, text: str, fallback_name: str) -> Schema:
        """Adds an endpoint's schema (JSON text); returns what refers to it (a `$ref`, or
        the schema itself when it is not an object model)."""
        try:
            schema = json.loads(text) if text else {}
        except ValueError:
            schema = {}
        if not isinstance(schema, dict):
            return {}
        defs = _defs(schema)
        top = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
        if _local_ref(top) is None and top.get("type") == "object":
            name = _component_name(str(top.get("title") or fallback_name))
            while name in defs:
                name += "_"
            defs[name] = top
            top = {"$ref": "#/$defs/" + name}
        names = self._place(defs)
        for name, definition in defs.items():
            self.schemas[names[name]] = _rewrite(definition, names)
        rewritten: Schema = _rewrite(top, names)
        return rewritten

    def _place(self, defs: Mapping[str, Schema]) -> dict[str, str]:
        """The component name each of a schema's `$defs` gets."""
        clashing = {n for n, d in defs.items()
                    if n in self.schemas and self.schemas[n] != _rewrite(d, {})}
        grown = True
        while grown:  # a model that refers to a renamed one is renamed too
            more = {n for n, d in defs.items() if n not in clashing and _refs(d) & clashing}
            clashing |= more
            grown = bool(more)
        names = {n: n for n in defs if n not in clashing and _component_name(n) == n}
        taken = set(self.schemas) | set(names.values())
        for name in sorted(set(defs) - set(names)):
            base = _component_name(name)
            candidate, number = base, 2
            while candidate in taken or (name in clashing and candidate == base):
                candidate, number = f"{base}{number}", number + 1
            names[name] = candidate
            taken.add(candidate)
        return names


def _component_name(name: str) -> str:
    """`name` as OpenAPI allows a component's name (letters, digits, `.`, `-`, `_`)."""
    return _NOT_IN_NAMES.sub("_", name) or "Model"


def _defs(schema: Schema) -> dict[str, Schema]:
    found: dict[str, Schema] = {}
    for key in ("definitions", "$defs"):
        value = schema.get(key)
        if isinstance(value, dict):
            found.update({str(k): v for k, v in value.items() if isinstance(v, dict)})
    return found


def _local_ref(value: object) -> str | None:
    """The `$defs` name a `{"$ref": "#/$defs/NAME"}` names (None for anything else)."""
    if not isinstance(value, dict):
        return None
    ref = value.get("$ref")
    if isinstance(ref, str):
        for prefix in _REF_PREFIXES:
            if ref.startswith(prefix):
                return ref[len(prefix):]
    return None


def _refs(value: object) -> set[str]:
    """The `$defs` names `value` refers to, at any depth."""
    found: set[str] = set()
    if isinstance(value, dict):
        if (name := _local_ref(value)) is not None:
            found.add(name)
        for item in value.values():
            found |= _refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= _refs(item)
    return found


def _rewrite(value: Any, names: Mapping[str, str]) -> Any:
    """`value` with each local `$ref` pointing into components/schemas (renamed per
    `names`) and nested `$defs` dropped (they were hoisted)."""
    if isinstance(value, dict):
        if (name := _local_ref(value)) is not None:
            return {**{k: _rewrite(v, names) for k, v in value.items() if k != "$ref"},
                    "$ref": _COMPONENTS + names.get(name, name)}
        return {k: _rewrite(v, names) for k, v in value.items()
                if k not in ("$defs", "definitions")}
    if isinstance(value, list):
        return [_rewrite(item, names) for item in value]
    return value


def _error_schema() -> Schema:
    return {
        "type": "object", "required": ["detail", "error_type"],
        "properties": {
            "detail": {"type": "string"},
            "error_type": {"type": "string", "description": "fal's error type, e.g. "
                           "request_timeout, runner_server_error, not_found"}},
    }


def _validation_schema() -> Schema:
    item = {"type": "object", "required": ["loc", "msg", "type"], "properties": {
        "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
        "msg": {"type": "string"}, "type": {"type": "string"}}}
    return {"type": "object", "required": ["detail"], "properties": {
        "detail": {"type": "array", "items": item}, "error_type": {"type": "string"}}}


def _queue_status_schema() -> Schema:
    log = {"type": "object", "properties": {
        "message": {"type": "string"}, "timestamp": {"type": "string"}}}
    return {
        "type": "object", "required": ["status", "request_id"],
        "properties": {
            "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
            "request_id": {"type": "string"},
            "queue_position": {"type": "integer"},
            "response_url": {"type": "string", "format": "uri"},
            "status_url": {"type": "string", "format": "uri"},
            "cancel_url": {"type": "string", "format": "uri"},
            "logs": {"type": ["array", "null"], "items": log},
            "metrics": {"type": "object", "properties": {
                "inference_time": {"type": ["number", "null"]}}},
            "error": {"type": ["string", "null"]},
            "error_type": {"type": ["string", "null"]},
        },
    }


def _submitted_schema() -> Schema:
    url = {"type": "string", "format": "uri"}
    return {
        "type": "object",
        "required": ["request_id", "response_url", "status_url", "cancel_url"],
        "properties": {"request_id": {"type": "string"}, "response_url": url,
                       "status_url": url, "cancel_url": url,
                       "queue_position": {"type": "integer"}},
    }


_SHARED_SCHEMAS: dict[str, Schema] = {
    "FalrtError": _error_schema(),
    "FalrtValidationError": _validation_schema(),
    "QueueStatus": _queue_status_schema(),
    "QueueSubmitted": _submitted_schema(),
}
_ERROR_NAMES = {
    "400": "BadRequest", "401": "Unauthenticated", "403": "PermissionDenied",
    "404": "NotFound", "422": "ValidationFailed", "429": "TooManyRequests",
    "500": "ServerError",
}


def _error_responses(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, name in items:
        schema = "FalrtValidationError" if status == "422" else "FalrtError"
        responses[name] = {
            "description": f"{status}: fal's error envelope",
            "headers": {"X-Fal-Error-Type": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    return responses


_ERROR_RESPONSES = _error_responses(_ERROR_NAMES.items())
