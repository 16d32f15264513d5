"""The `@endpoint` decorator and endpoint discovery on App classes.

An endpoint is a method decorated with `@endpoint("/path")`, sync or async, plain or a
generator (a generator streams: every yielded item is one partial output). It takes exactly one
input parameter annotated with a model type (msgspec Struct or pydantic model) and returns (or
yields) a model type; annotations are read with `typing.get_type_hints`, so string annotations
work as long as the names are defined in the method's module.
"""

from __future__ import annotations

import asyncio
import collections.abc
import enum
import functools
import inspect
import typing
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from falrt.sdk.codec import Codec, codec_for, is_model_type
from falrt.sdk.options import FalOptionWarning

__all__ = [
    "Endpoint", "EndpointKind", "HealthCheck", "collect_endpoints", "endpoint", "endpoint_path",
    "realtime",
]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__falrt_endpoint_path__"
_HEALTH_MARK = "__falrt_health_check__"
_BATCH_MARK = "__falrt_batch__"
_REALTIME_MARK = "__falrt_realtime__"
_STREAM_ORIGINS = (
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


class EndpointKind(enum.Enum):
    """How an endpoint answers: one output, a stream of partial outputs, or (realtime) a
    stream of outputs to a stream of inputs."""

    UNARY = "unary"
    STREAM = "stream"
    REALTIME = "realtime"

    @property
    def number(self) -> int:
        """Its number in the contract (falrt.v1.EndpointKind) and in stored revisions."""
        return _KIND_NUMBERS[self]

    @classmethod
    def from_number(cls, number: int) -> EndpointKind:
        """The kind a contract number stands for. Raises ValueError for any other number."""
        for kind, kind_number in _KIND_NUMBERS.items():
            if kind_number == number:
                return kind
        raise ValueError(f"no endpoint kind has the number {number}")


_KIND_NUMBERS = {EndpointKind.UNARY: 1, EndpointKind.STREAM: 2, EndpointKind.REALTIME: 3}


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Makes an endpoint the runner's health check (fal's `fal.HealthCheck`).

    Inside the runner, after `setup()` and `start_period_seconds`, the endpoint is called
    every `period_seconds` (when `call_regularly`) with an empty input (`{}`: every input
    field needs a default); a call that raises or takes longer than `timeout_seconds` fails.
    After `failure_threshold` failures in a row the runner stops and is replaced; the
    requests it was running are retried on another runner. fal calls every 15 s; the period
    is a falrt setting.
    """

    start_period_seconds: float = 30.0
    timeout_seconds: float = 5.0
    failure_threshold: int = 3
    call_regularly: bool = True
    period_seconds: float = 15.0

    def __post_init__(self) -> None:
        for name in ("start_period_seconds", "timeout_seconds", "period_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"HealthCheck.{name} must be >= 0")
        if self.timeout_seconds == 0 or self.period_seconds == 0:
            raise ValueError("HealthCheck timeout_seconds and period_seconds must be > 0")
        if self.failure_threshold < 1:
            raise ValueError("HealthCheck.failure_threshold must be >= 1")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of an App class, resolved at class creation.

    `name` is the method name (look it up on an instance to call it); `is_async` says whether
    calling it gives a coroutine (unary) or an async iterator (stream).
    """

    path: str
    name: str
    kind: EndpointKind
    is_async: bool
    input_type: type[Any]
    output_type: type[Any]
    input_codec: Codec
    output_codec: Codec
    health_check: HealthCheck | None = None
    # Dynamic batching: the handler takes a list of inputs and returns a list of outputs;
    # concurrent requests are gathered into one call (see shim/batching.py).
    max_batch_size: int = 0
    max_batch_wait_ms: float = 0.0

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def endpoint(
    path: str, *, health_check: HealthCheck | None = None, max_batch_size: int = 0,
    max_batch_wait_ms: float = 5.0, realtime: bool = False,
) -> Callable[[F], F]:
    """Marks an App method as the handler of `path` (which must start with "/"); with
    `health_check`, also as the app's health check (at most one per app).

    With `max_batch_size` > 1 the endpoint is batched: the method takes `list[Input]` and
    returns `list[Output]` (one output per input, in order; an `Exception` instance in the
    list fails only that item). The runner gathers concurrent requests of the endpoint, from
    the queue and the direct path alike, into one call: a batch starts when it is full or
    `max_batch_wait_ms` after its first request arrived. Give the app a `max_multiplexing` of
    at least `max_batch_size`, or batches can never fill.

    With `realtime=True` the endpoint serves `Queue.Realtime` sessions: the method is an async
    generator taking `AsyncIterator[Input]` and yielding outputs, called once per session, on
    one runner for the life of the session (a session holds one of its slots).

    Raises ValueError for a malformed path or batch setting; the method's signature is
    checked when its class is created (TypeError).
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"endpoint path must be a string starting with '/', got {path!r}")
    if health_check is not None and not isinstance(health_check, HealthCheck):
        raise TypeError(f"health_check must be a falrt.HealthCheck, got {health_check!r}")
    if not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ValueError(f"max_batch_size must be an int >= 0, got {max_batch_size!r}")
    if max_batch_wait_ms < 0:
        raise ValueError(f"max_batch_wait_ms must be >= 0, got {max_batch_wait_ms!r}")

    def mark(fn: F) -> F:
        setattr(fn, _MARK, path)
        setattr(fn, _HEALTH_MARK, health_check)
        if max_batch_size > 1:
            setattr(fn, _BATCH_MARK, (max_batch_size, float(max_batch_wait_ms)))
        if realtime:
            setattr(fn, _REALTIME_MARK, True)
        return fn

    return mark


_FAL_REALTIME_OPTIONS = frozenset({
    "buffering", "session_timeout", "input_modal", "output_modal", "max_batch_size",
    "content_type", "encode_message", "decode_message",
})


def realtime(path: str = "/realtime", **fal_options: Any) -> Callable[[F], F]:
    """fal's `@fal.realtime(path)`: a realtime endpoint (`endpoint(path, realtime=True)`).

    The method is either falrt's form, an async generator taking `AsyncIterator[Input]`, or
    fal's: a method (sync or async) taking one `Input` and returning one `Output`, called
    for each input of the session in order (a sync one in a worker thread). fal's other
    options (`buffering`, `session_timeout`, `max_batch_size`, `content_type`, ...) are
    accepted with a `FalOptionWarning` and ignored: falrt sessions are gRPC streams, bounded
    by the server. Raises TypeError for an option fal does not have either.
    """
    unknown = sorted(set(fal_options) - _FAL_REALTIME_OPTIONS)
    if unknown:
        raise TypeError(f"realtime() got unknown option(s) {', '.join(unknown)}")
    if fal_options:
        warnings.warn(f"realtime({path!r}): fal option(s) {', '.join(sorted(fal_options))} "
                      "are not implemented by falrt and are ignored (sessions are gRPC "
                      "streams with the server's bounds)", FalOptionWarning, stacklevel=2)
    mark = endpoint(path, realtime=True)

    def decorate(fn: F) -> F:
        if inspect.isasyncgenfunction(fn):
            return mark(fn)
        return mark(typing.cast(F, _per_message_session(fn)))

    return decorate


def _per_message_session(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An async generator answering each input of a session with `fn(self, input)`."""
    input_type, output_type = _io_types(fn, streams=False)
    is_async = inspect.iscoroutinefunction(fn)

    @functools.wraps(fn)
    async def session(self: Any, inputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item in inputs:
            if is_async:
                yield await fn(self, item)
            else:
                yield await asyncio.to_thread(fn, self, item)

    del session.__wrapped__  # (so signature and type hints are the session's own)
    session.__annotations__ = {"inputs": AsyncIterator[input_type],  # type: ignore[valid-type]
                               "return": AsyncIterator[output_type]}  # type: ignore[valid-type]
    return session


def endpoint_path(obj: object) -> str | None:
    """The path `obj` was marked with by `@endpoint`, or None."""
    path = getattr(obj, _MARK, None)
    return path if isinstance(path, str) else None


def _stream_item_type(fn: Callable[..., Any], annotation: Any) -> Any:
    """The item type of a generator's return annotation (`Iterator[Out]` -> `Out`)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin not in _STREAM_ORIGINS or not args:
        raise TypeError(
            f"generator endpoint {fn.__qualname__} must be annotated as returning "
            f"Iterator[Output] or AsyncIterator[Output], got {annotation!r}"
        )
    return args[0]


def _io_types(
    fn: Callable[..., Any], streams: bool, batched: bool = False, realtime: bool = False
) -> tuple[type[Any], type[Any]]:
    """The (input, output) model types of an endpoint method (of each item, for a batched
    one: `list[Input] -> list[Output]`). Raises TypeError."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    if len(params) != 1:
        raise TypeError(f"endpoint {fn.__qualname__} must take exactly one input parameter")
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise TypeError(f"cannot resolve the annotations of {fn.__qualname__}: {exc}") from exc
    input_type = hints.get(params[0].name)
    output_type = hints.get("return")
    if streams and output_type is not None:
        output_type = _stream_item_type(fn, output_type)
    if batched:
        input_type, output_type = _list_item(fn, input_type), _list_item(fn, output_type)
    if realtime:
        input_type = _stream_item_type(fn, input_type)
    for role, tp in (("input", input_type), ("output", output_type)):
        if not is_model_type(tp):
            raise TypeError(
                f"endpoint {fn.__qualname__}: the {role} must be annotated with a "
                f"msgspec.Struct or pydantic model, got {tp!r}"
            )
    return typing.cast(type[Any], input_type), typing.cast(type[Any], output_type)


def _list_item(fn: Callable[..., Any], annotation: Any) -> Any:
    if typing.get_origin(annotation) is not list or len(typing.get_args(annotation)) != 1:
        raise TypeError(f"batched endpoint {fn.__qualname__} must take list[Input] and return "
                        f"list[Output], got {annotation!r}")
    return typing.get_args(annotation)[0]


def _describe_method(name: str, fn: Callable[..., Any], path: str) -> Endpoint:
    """Builds the Endpoint of one decorated method. Raises TypeError."""
    is_async_gen = inspect.isasyncgenfunction(fn)
    streams = is_async_gen or inspect.isgeneratorfunction(fn)
    batch_size, batch_wait_ms = getattr(fn, _BATCH_MARK, (0, 0.0))
    if batch_size and streams:
        raise TypeError(f"batched endpoint {fn.__qualname__} must not be a generator")
    realtime = bool(getattr(fn, _REALTIME_MARK, False))
    if realtime and not is_async_gen:
        raise TypeError(f"realtime endpoint {fn.__qualname__} must be an async generator "
                        "taking AsyncIterator[Input]")
    input_type, output_type = _io_types(fn, streams, batched=bool(batch_size),
                                        realtime=realtime)
    health_check = getattr(fn, _HEALTH_MARK, None)
    if health_check is not None:
        _check_health_endpoint(fn, streams, input_type)
    return Endpoint(
        path=path,
        name=name,
        kind=(EndpointKind.REALTIME if realtime else
              EndpointKind.STREAM if streams else EndpointKind.UNARY),
        is_async=is_async_gen or inspect.iscoroutinefunction(fn),
        input_type=input_type,
        output_type=output_type,
        input_codec=codec_for(input_type),
        output_codec=codec_for(output_type),
        health_check=health_check,
        max_batch_size=batch_size,
        max_batch_wait_ms=batch_wait_ms,
    )


def _check_health_endpoint(fn: Callable[..., Any], streams: bool, input_type: type[Any]) -> None:
    if streams:
        raise TypeError(f"health check endpoint {fn.__qualname__} must not be a generator")
    try:
        codec_for(input_type).decode(b"{}", False)
    except Exception as exc:
        raise TypeError(
            f"health check endpoint {fn.__qualname__}: every field of its input must have a "
            f"default (it is called with {{}}): {exc}") from None


def collect_endpoints(cls: type) -> dict[str, Endpoint]:
    """The endpoints of a class (its own and inherited), by path, in definition order.

    Raises TypeError for duplicate paths or a malformed endpoint method.
    """
    found: dict[str, Endpoint] = {}
    seen: set[str] = set()
    for klass in cls.__mro__:
        for name, attr in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            path = endpoint_path(attr)
            if path is None:
                continue
            if path in found:
                raise TypeError(
                    f"{cls.__qualname__}: path {path!r} is served by both "
                    f"{found[path].name}() and {name}()"
                )
            found[path] = _describe_method(name, attr, path)
    checks = [ep.path for ep in found.values() if ep.health_check is not None]
    if len(checks) > 1:
        raise TypeError(f"{cls.__qualname__}: only one endpoint may be the health check, "
                        f"not {checks}")
    return found
