"""Conversion between SDK descriptions and the Control protobuf messages (the one place).

`to_deploy_header` builds the first message of a `Control.Deploy` stream from an
`AppDescription`; `settings_to_proto`/`endpoints_to_proto` build its parts and
`settings_from_proto`/`endpoint_from_proto` convert back (used to show deployed apps, and
by the round-trip tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, cast

from falrt.sdk.endpoints import EndpointKind
from falrt.sdk.spec import AppDescription, AppSettingsSpec, EndpointDescription
from falrt.v1 import control_pb2
from falrt.vocabulary import InputCheck

__all__ = [
    "endpoint_from_proto",
    "endpoints_to_proto",
    "settings_from_proto",
    "settings_to_proto",
    "to_deploy_header",
]

_OptionalField = Literal[
    "num_gpus",
    "runners_per_gpu",
    "keep_alive_s",
    "min_concurrency",
    "max_concurrency",
    "concurrency_buffer",
    "concurrency_buffer_perc",
    "scaling_delay_s",
    "max_multiplexing",
    "request_timeout_s",
    "startup_timeout_s",
    "termination_grace_period_s",
]
_OPTIONAL_FIELDS: tuple[_OptionalField, ...] = (
    "num_gpus",
    "runners_per_gpu",
    "keep_alive_s",
    "min_concurrency",
    "max_concurrency",
    "concurrency_buffer",
    "concurrency_buffer_perc",
    "scaling_delay_s",
    "max_multiplexing",
    "request_timeout_s",
    "startup_timeout_s",
    "termination_grace_period_s",
)

def settings_to_proto(
    settings: AppSettingsSpec, requirements: Iterable[str] = ()
) -> control_pb2.AppSettings:
    """AppSettings with only the set fields present (proto3 optional fields stay unset)."""
    values: dict[str, Any] = {
        name: getattr(settings, name)
        for name in _OPTIONAL_FIELDS
        if getattr(settings, name) is not None
    }
    return control_pb2.AppSettings(
        requirements=list(requirements),
        machine_types=list(settings.machine_types),
        app_auth=settings.app_auth or "",
        skip_retry_conditions=list(settings.skip_retry_conditions),
        retry_config=dict(settings.retry_config),
        secrets=list(settings.secrets),
        dockerfile=settings.dockerfile,
        private_logs=settings.private_logs,
        **values,
    )


def settings_from_proto(message: control_pb2.AppSettings) -> AppSettingsSpec:
    """The settings an AppSettings message carries (its requirements are not included)."""
    values = {name: getattr(message, name) for name in _OPTIONAL_FIELDS if message.HasField(name)}
    return AppSettingsSpec(
        machine_types=tuple(message.machine_types) or ("S",),
        app_auth=message.app_auth or None,
        skip_retry_conditions=tuple(message.skip_retry_conditions),
        retry_config=dict(message.retry_config),
        secrets=tuple(message.secrets),
        dockerfile=message.dockerfile,
        private_logs=message.private_logs,
        **values,
    )


def endpoints_to_proto(
    endpoints: Iterable[EndpointDescription],
) -> list[control_pb2.EndpointSpec]:
    """EndpointSpec messages, in the given order."""
    return [
        control_pb2.EndpointSpec(
            path=ep.path,
            name=ep.name,
            kind=cast(control_pb2.EndpointKind.ValueType, EndpointKind(ep.kind).number),
            input_schema_json=ep.input_schema_json,
            output_schema_json=ep.output_schema_json,
            input_check=cast(control_pb2.InputCheck.ValueType, ep.input_check.number),
        )
        for ep in endpoints
    ]


def endpoint_from_proto(message: control_pb2.EndpointSpec) -> EndpointDescription:
    """The description an EndpointSpec carries. Raises ValueError for an unknown kind."""
    try:
        kind = EndpointKind.from_number(message.kind).value
    except ValueError:
        raise ValueError(
            f"endpoint {message.path!r} has no valid kind ({message.kind})") from None
    return EndpointDescription(
        path=message.path,
        name=message.name,
        kind=cast(Literal["unary", "stream", "realtime"], kind),
        input_schema_json=message.input_schema_json,
        output_schema_json=message.output_schema_json,
        input_check=InputCheck.from_number(message.input_check),
    )


def to_deploy_header(
    description: AppDescription,
    *,
    bundle_sha256: str,
    bundle_size: int,
    message: str = "",
    app_name: str | None = None,
) -> control_pb2.DeployHeader:
    """The DeployHeader of a deploy of `description` (app_name overrides the class's)."""
    return control_pb2.DeployHeader(
        app_name=app_name or description.app_name,
        entrypoint=description.entrypoint,
        bundle_sha256=bundle_sha256,
        bundle_size=bundle_size,
        settings=settings_to_proto(description.settings, description.requirements),
        endpoints=endpoints_to_proto(description.endpoints),
        message=message,
    )
