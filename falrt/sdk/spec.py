"""What an App class declares, as plain data: the description the CLI deploys.

`describe(cls)` reads an App class (already imported) and returns an `AppDescription`: its
name, entrypoint, requirements, the settings it sets (unset ones are None: the server
default applies) and, for each endpoint, its path, method, kind and JSON schemas.
`falrt.sdk.wire` turns a description into the protobuf messages of a DeployHeader.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from falrt.requirement_stages import join_stages
from falrt.sdk.app import App
from falrt.sdk.codec import json_schema
from falrt.sdk.endpoints import Endpoint
from falrt.sdk.input_check import input_check_for
from falrt.sdk.options import requirement_stages, retry_counts
from falrt.vocabulary import InputCheck

__all__ = ["AppDescription", "AppSettingsSpec", "EndpointDescription", "describe"]


class AppSettingsSpec(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """An app's settings; None means unset (server default). Durations in seconds."""

    machine_types: tuple[str, ...] = ("S",)
    num_gpus: int | None = None
    runners_per_gpu: int | None = None
    app_auth: str | None = None
    keep_alive_s: float | None = None
    min_concurrency: int | None = None
    max_concurrency: int | None = None
    concurrency_buffer: int | None = None
    concurrency_buffer_perc: float | None = None
    scaling_delay_s: float | None = None
    max_multiplexing: int | None = None
    request_timeout_s: float | None = None
    startup_timeout_s: float | None = None
    termination_grace_period_s: float | None = None
    skip_retry_conditions: tuple[str, ...] = ()
    retry_config: dict[str, int] = msgspec.field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    dockerfile: str = ""
    # fal's private_logs: request logs reach only keys of the app's owner.
    private_logs: bool = False


class EndpointDescription(msgspec.Struct, frozen=True):
    """One endpoint: path, Python method name, kind, input/output JSON Schemas as JSON text."""

    path: str
    name: str
    kind: Literal["unary", "stream", "realtime"]
    input_schema_json: str
    output_schema_json: str
    # How much of the input schema the server checks before a runner sees an input.
    input_check: InputCheck = InputCheck.NONE


class AppDescription(msgspec.Struct, frozen=True):
    """Everything a deploy needs to know about an App class besides its code bundle."""

    app_name: str
    # "module:Class", relative to the folder of the app file (the bundle root).
    entrypoint: str
    # pip specifiers in install stages, an empty string ending each stage but the last
    # (falrt/requirement_stages.py); a list without one is one stage.
    requirements: tuple[str, ...]
    settings: AppSettingsSpec
    endpoints: tuple[EndpointDescription, ...]


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _settings(cls: type[App]) -> AppSettingsSpec:
    machine = cls.machine_type
    return AppSettingsSpec(
        machine_types=(machine,) if isinstance(machine, str) else tuple(machine),
        num_gpus=cls.num_gpus,
        runners_per_gpu=cls.runners_per_gpu,
        app_auth=cls.app_auth,
        secrets=tuple(cls.secrets or ()),
        dockerfile=cls.dockerfile or "",
        private_logs=bool(cls.private_logs),
        keep_alive_s=_float(cls.keep_alive),
        min_concurrency=cls.min_concurrency,
        max_concurrency=cls.max_concurrency,
        concurrency_buffer=cls.concurrency_buffer,
        concurrency_buffer_perc=_float(cls.concurrency_buffer_perc),
        scaling_delay_s=_float(cls.scaling_delay),
        max_multiplexing=cls.max_multiplexing,
        request_timeout_s=_float(cls.request_timeout),
        startup_timeout_s=_float(cls.startup_timeout),
        termination_grace_period_s=_float(cls.termination_grace_period_seconds),
        skip_retry_conditions=tuple(cls.skip_retry_conditions or ()),
        retry_config=retry_counts(cls.retry_config),
    )


def _schema_text(tp: type, output: bool = False) -> str:
    return msgspec.json.encode(json_schema(tp, output)).decode()


def describe_endpoint(ep: Endpoint) -> EndpointDescription:
    """The description of one resolved endpoint."""
    return EndpointDescription(
        path=ep.path,
        name=ep.name,
        kind=ep.kind.value,
        input_schema_json=_schema_text(ep.input_type),
        output_schema_json=_schema_text(ep.output_type, output=True),
        input_check=input_check_for(ep.input_type),
    )


def describe(cls: type[App]) -> AppDescription:
    """The description of an App class. Raises TypeError if `cls` is not an App subclass."""
    if not (isinstance(cls, type) and issubclass(cls, App)) or cls is App:
        raise TypeError(f"{cls!r} is not a falrt.App subclass")
    return AppDescription(
        app_name=cls.resolved_app_name(),
        entrypoint=f"{cls.__module__}:{cls.__qualname__}",
        requirements=join_stages(requirement_stages(cls.requirements)),
        settings=_settings(cls),
        endpoints=tuple(describe_endpoint(ep) for ep in cls.endpoints().values()),
    )
