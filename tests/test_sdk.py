"""Tests of the SDK: App options, endpoints, codecs, descriptions, wire conversion, loader."""

import asyncio
import json
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

import falrt
from falrt.errors import InvalidArgumentError, ValidationFailedError
from falrt.requirement_stages import split_stages
from falrt.sdk.app import FalOptionWarning, instantiate
from falrt.sdk.codec import codec_for, is_msgpack
from falrt.sdk.context import RequestContext, request_var
from falrt.sdk.endpoints import EndpointKind
from falrt.sdk.loader import load_app_class, load_app_ref, parse_app_ref
from falrt.sdk.options import kebab_case
from falrt.sdk.spec import AppSettingsSpec, describe
from falrt.sdk.wire import (
    endpoint_from_proto,
    endpoints_to_proto,
    settings_from_proto,
    settings_to_proto,
    to_deploy_header,
)
from falrt.server.api.convert import app_config, app_settings
from falrt.v1 import control_pb2

pytestmark = pytest.mark.unit


class Item(msgspec.Struct):
    size: int


class Input(msgspec.Struct):
    name: str
    count: int = 1
    items: list[Item] = []


class Output(msgspec.Struct):
    text: str


class MyTextApp(falrt.App, keep_alive=300, max_concurrency=4):
    machine_type = ["GPU-H100", "GPU-A100"]
    requirements = ["numpy"]
    request_timeout = 30

    @falrt.endpoint("/")
    def generate(self, inp: Input) -> Output:
        return Output(text=inp.name * inp.count)

    @falrt.endpoint("/async")
    async def agenerate(self, inp: Input) -> Output:
        return Output(text=inp.name)

    @falrt.endpoint("/stream")
    def stream(self, inp: Input) -> Iterator[Output]:
        yield Output(text=inp.name)

    @falrt.endpoint("/astream")
    async def astream(self, inp: Input) -> AsyncIterator[Output]:
        yield Output(text=inp.name)


def test_options_come_from_class_attributes_and_class_keywords() -> None:
    assert MyTextApp.keep_alive == 300
    assert MyTextApp.max_concurrency == 4
    assert MyTextApp.request_timeout == 30
    assert MyTextApp.machine_type == ["GPU-H100", "GPU-A100"]
    assert MyTextApp.min_concurrency is None
    assert falrt.App.keep_alive is None


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("MyTextApp", "my-text-app"),
        ("HTTPServer", "http-server"),
        ("Hello", "hello"),
        ("App2Go", "app2-go"),
        ("my_app", "my-app"),
    ],
)
def test_default_app_name_is_kebab_case_of_the_class_name(class_name: str, expected: str) -> None:
    assert kebab_case(class_name) == expected


def test_app_name_attribute_overrides_the_default() -> None:
    class Named(falrt.App, app_name="text-to-image"):
        pass

    assert Named.resolved_app_name() == "text-to-image"
    assert MyTextApp.resolved_app_name() == "my-text-app"


def test_overriding_init_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match="setup"):

        class Bad(falrt.App):
            def __init__(self) -> None:
                pass


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"keep_alive": "300"}, TypeError),
        ({"max_multiplexing": 2.5}, TypeError),
        ({"max_multiplexing": True}, TypeError),
        ({"max_multiplexing": 0}, ValueError),
        ({"requirements": "numpy"}, TypeError),
        ({"machine_type": 3}, TypeError),
        ({"machine_type": []}, ValueError),
        ({"app_auth": "everyone"}, ValueError),
        ({"app_name": "Not Kebab"}, ValueError),
        ({"request_timeout": 0}, ValueError),
        ({"min_concurrency": 3, "max_concurrency": 1}, ValueError),
        ({"no_such_option": 1}, TypeError),
    ],
)
def test_bad_option_values_fail_at_class_creation(
    options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        type("Bad", (falrt.App,), {}, **options)


def test_bad_class_attribute_types_fail_with_the_option_name() -> None:
    with pytest.raises(TypeError, match="keep_alive"):

        class Bad(falrt.App):
            keep_alive = "forever"  # type: ignore[assignment]


def test_apps_are_not_instantiated_outside_a_runner() -> None:
    with pytest.raises(RuntimeError, match="runner"):
        MyTextApp()
    app = instantiate(MyTextApp)
    assert isinstance(app, MyTextApp)
    assert app.current_request is None
    with pytest.raises(TypeError):
        instantiate(Input)  # type: ignore[type-var]


def test_endpoints_are_discovered_with_kind_and_types() -> None:
    eps = MyTextApp.endpoints()
    assert set(eps) == {"/", "/async", "/stream", "/astream"}
    cases = {
        "/": ("generate", EndpointKind.UNARY, False),
        "/async": ("agenerate", EndpointKind.UNARY, True),
        "/stream": ("stream", EndpointKind.STREAM, False),
        "/astream": ("astream", EndpointKind.STREAM, True),
    }
    for path, (name, kind, is_async) in cases.items():
        assert (eps[path].name, eps[path].kind, eps[path].is_async) == (name, kind, is_async)
        assert eps[path].input_type is Input
        assert eps[path].output_type is Output


def test_subclasses_inherit_endpoints() -> None:
    class Child(MyTextApp):
        @falrt.endpoint("/extra")
        def extra(self, inp: Input) -> Output:
            return Output(text="x")

    assert set(Child.endpoints()) == {"/", "/async", "/stream", "/astream", "/extra"}


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(TypeError, match="'/'"):

        class Dup(falrt.App):
            @falrt.endpoint("/")
            def one(self, inp: Input) -> Output:
                return Output(text="1")

            @falrt.endpoint("/")
            def two(self, inp: Input) -> Output:
                return Output(text="2")


def test_paths_must_start_with_a_slash() -> None:
    with pytest.raises(ValueError, match="'/'"):
        falrt.endpoint("predict")


def test_endpoints_need_model_annotations() -> None:
    with pytest.raises(TypeError, match="input"):

        class NoModel(falrt.App):
            @falrt.endpoint("/")
            def run(self, inp: dict) -> Output:  # type: ignore[type-arg]
                return Output(text="")

    with pytest.raises(TypeError, match="output"):

        class NoReturn(falrt.App):
            @falrt.endpoint("/")
            def run(self, inp: Input):  # type: ignore[no-untyped-def]
                return Output(text="")

    with pytest.raises(TypeError, match="exactly one"):

        class TwoParams(falrt.App):
            @falrt.endpoint("/")
            def run(self, a: Input, b: Input) -> Output:
                return Output(text="")

    with pytest.raises(TypeError, match="Iterator"):

        class BadStream(falrt.App):
            @falrt.endpoint("/")
            def run(self, inp: Input) -> Output:  # type: ignore[misc]
                yield Output(text="")


def _field_errors(data: bytes, content_type: str = "") -> tuple[tuple[str, str], ...]:
    with pytest.raises(ValidationFailedError) as info:
        codec_for(Input).decode(data, is_msgpack(content_type))
    return info.value.field_errors


def test_missing_field_is_reported_at_its_path() -> None:
    assert _field_errors(b"{}") == (("$.name", "field required"),)


def test_wrong_type_is_reported_at_its_path() -> None:
    [(loc, msg)] = _field_errors(b'{"name": "a", "count": "x"}')
    assert loc == "$.count"
    assert "int" in msg


def test_nested_errors_are_reported_at_their_path() -> None:
    [(loc, _)] = _field_errors(b'{"name": "a", "items": [{"size": 1}, {"size": "big"}]}')
    assert loc == "$.items[1].size"
    assert _field_errors(b'{"name": "a", "items": [{}]}') == (
        ("$.items[0].size", "field required"),
    )


def test_malformed_json_and_wrong_document_type_are_reported_at_the_root() -> None:
    assert _field_errors(b'{"name": ')[0][0] == "$"
    assert _field_errors(b"[1]")[0][0] == "$"


def test_msgpack_input_is_decoded_and_validated() -> None:
    codec = codec_for(Input)
    value = codec.decode(msgspec.msgpack.encode({"name": "a"}), True)
    assert value == Input(name="a")
    assert _field_errors(msgspec.msgpack.encode({"count": 1}), "application/msgpack") == (
        ("$.name", "field required"),
    )


def test_unknown_content_types_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="text/plain"):
        is_msgpack("text/plain")


def test_outputs_encode_as_json_or_msgpack() -> None:
    codec = codec_for(Output)
    assert json.loads(codec.encode(Output(text="hi"), False)) == {"text": "hi"}
    assert msgspec.msgpack.decode(codec.encode(Output(text="hi"), True)) == {"text": "hi"}


def test_pydantic_models_are_supported_when_installed() -> None:
    pydantic = pytest.importorskip("pydantic")

    class PIn(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        items: list[int] = []

    codec = codec_for(PIn)
    assert codec.decode(b'{"name": "a"}', False).name == "a"
    with pytest.raises(ValidationFailedError) as info:
        codec.decode(b'{"name": "a", "items": [1, "x"]}', False)
    assert info.value.field_errors[0][0] == "$.items[1]"
    assert json.loads(codec.encode(PIn(name="b"), False)) == {"name": "b", "items": []}


def test_describe_reports_name_entrypoint_settings_and_schemas() -> None:
    desc = describe(MyTextApp)
    assert desc.app_name == "my-text-app"
    assert desc.entrypoint == f"{__name__}:MyTextApp"
    assert desc.requirements == ("numpy",)
    assert desc.settings == AppSettingsSpec(
        machine_types=("GPU-H100", "GPU-A100"),
        keep_alive_s=300.0,
        max_concurrency=4,
        request_timeout_s=30.0,
    )
    by_path = {ep.path: ep for ep in desc.endpoints}
    assert by_path["/stream"].kind == "stream"
    assert by_path["/"].kind == "unary"
    schema = json.loads(by_path["/"].input_schema_json)
    assert schema["$defs"]["Input"]["required"] == ["name"]
    assert "Output" in json.loads(by_path["/"].output_schema_json)["$defs"]


def test_describe_refuses_non_apps() -> None:
    with pytest.raises(TypeError):
        describe(Input)  # type: ignore[arg-type]


def test_settings_round_trip_through_proto_with_unset_fields_left_unset() -> None:
    desc = describe(MyTextApp)
    message = settings_to_proto(desc.settings, desc.requirements)
    assert list(message.requirements) == ["numpy"]
    assert list(message.machine_types) == ["GPU-H100", "GPU-A100"]
    assert message.keep_alive_s == 300.0
    assert not message.HasField("min_concurrency")
    assert not message.HasField("max_multiplexing")
    assert settings_from_proto(message) == desc.settings
    again = control_pb2.AppSettings.FromString(message.SerializeToString())
    assert settings_from_proto(again) == desc.settings


def test_runners_per_gpu_travels_from_the_class_to_the_servers_config() -> None:
    class Shared(falrt.App):
        machine_type = "GPU-H100"
        runners_per_gpu = 4

    settings = describe(Shared).settings
    assert settings.runners_per_gpu == 4
    message = control_pb2.AppSettings.FromString(settings_to_proto(settings).SerializeToString())
    assert settings_from_proto(message) == settings
    assert app_config(message).runners_per_gpu == 4
    assert app_settings(app_config(message)).runners_per_gpu == 4
    assert not settings_to_proto(describe(MyTextApp).settings).HasField("runners_per_gpu")


def test_zero_values_survive_the_proto_round_trip() -> None:
    settings = AppSettingsSpec(min_concurrency=0, scaling_delay_s=0.0, app_auth="public")
    message = settings_to_proto(settings)
    assert message.HasField("min_concurrency")
    assert settings_from_proto(message) == settings


def test_endpoints_round_trip_through_proto() -> None:
    desc = describe(MyTextApp)
    messages = endpoints_to_proto(desc.endpoints)
    kinds = {m.path: m.kind for m in messages}
    assert kinds["/astream"] == control_pb2.ENDPOINT_KIND_STREAM
    assert kinds["/"] == control_pb2.ENDPOINT_KIND_UNARY
    assert tuple(endpoint_from_proto(m) for m in messages) == desc.endpoints
    with pytest.raises(ValueError):
        endpoint_from_proto(control_pb2.EndpointSpec(path="/"))


def test_deploy_header_carries_the_description() -> None:
    header = to_deploy_header(describe(MyTextApp), bundle_sha256="ab" * 32, bundle_size=10)
    assert header.app_name == "my-text-app"
    assert header.entrypoint == f"{__name__}:MyTextApp"
    assert header.bundle_size == 10
    assert len(header.endpoints) == 4
    assert header.settings.max_concurrency == 4


def test_current_request_follows_the_context_in_tasks_and_threads() -> None:
    app = instantiate(MyTextApp)

    async def serve(request_id: str) -> str | None:
        request_var.set(RequestContext(request_id, "/"))
        await asyncio.sleep(0)
        in_thread = await asyncio.to_thread(lambda: app.current_request)
        assert in_thread is not None
        current = app.current_request
        assert current is not None and in_thread.request_id == current.request_id
        return current.request_id

    async def main() -> list[str | None]:
        return list(await asyncio.gather(serve("a"), serve("b")))

    assert asyncio.run(main()) == ["a", "b"]
    assert app.current_request is None


def test_request_context_reports_cancellation() -> None:
    cancel = threading.Event()
    ctx = RequestContext("r", "/", cancel)
    assert not ctx.cancelled
    assert not ctx.wait_cancelled(0)
    cancel.set()
    assert ctx.cancelled
    assert ctx.wait_cancelled(0)


APP_SOURCE = """
import msgspec
import falrt
import helper

class In(msgspec.Struct):
    name: str

class Out(msgspec.Struct):
    text: str

class Hello(falrt.App):
    @falrt.endpoint("/")
    def run(self, inp: In) -> Out:
        return Out(text=helper.GREETING + inp.name)

NOT_AN_APP = 3
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "helloapp.py").write_text(textwrap.dedent(APP_SOURCE))
    (tmp_path / "helper.py").write_text("GREETING = 'hi '\n")
    saved_path = list(sys.path)
    yield tmp_path
    sys.path[:] = saved_path
    for name in ("helloapp", "helper"):
        sys.modules.pop(name, None)


def test_loader_imports_a_file_with_its_local_modules(app_dir: Path) -> None:
    cls = load_app_ref(f"{app_dir / 'helloapp.py'}::Hello")
    assert cls.__name__ == "Hello"
    assert describe(cls).entrypoint == "helloapp:Hello"
    assert load_app_class(app_dir / "helloapp.py").__name__ == "Hello"


def test_loader_refuses_a_file_whose_module_name_is_taken(app_dir: Path) -> None:
    other = app_dir / "elsewhere"
    other.mkdir()
    (other / "helloapp.py").write_text(textwrap.dedent(APP_SOURCE))
    first = load_app_ref(f"{app_dir / 'helloapp.py'}::Hello")
    assert load_app_ref(f"{app_dir / 'helloapp.py'}::Hello") is first
    with pytest.raises(InvalidArgumentError, match="already imported"):
        load_app_ref(f"{other / 'helloapp.py'}::Hello")


def test_loader_imports_module_references(app_dir: Path) -> None:
    sys.path.insert(0, str(app_dir))
    assert load_app_ref("helloapp:Hello").__name__ == "Hello"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("missing.py::Hello", "does not exist"),
        ("helloapp.py::Nope", "no class 'Nope'"),
        ("helloapp.py::NOT_AN_APP", "not a falrt.App"),
        ("helper.py", "0 App classes"),
    ],
)
def test_loader_errors_are_clear(app_dir: Path, ref: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        load_app_ref(str(app_dir / ref))


def test_loader_reports_unknown_modules() -> None:
    with pytest.raises(InvalidArgumentError, match="not found"):
        load_app_ref("no_such_module_xyz:App")


def test_app_references_are_parsed() -> None:
    assert parse_app_ref("examples/hello.py::Hello") == ("examples/hello.py", "Hello")
    assert parse_app_ref("hello:Hello") == ("hello", "Hello")
    assert parse_app_ref("hello.py") == ("hello.py", None)


# fal's forms (docs/porting-from-fal.md)


class Prompt(msgspec.Struct):
    prompt: str


class Answer(msgspec.Struct):
    result: str


@pytest.mark.parametrize(("retry_config", "expected"), [
    ({"timeout": {"retries": 0}, "server_error": {"retries": 3}},
     {"timeout": 0, "server_error": 3}),
    ({"timeout": 0, "connection_error": 2}, {"timeout": 0, "connection_error": 2}),
])
def test_retry_config_takes_fal_form_and_falrt_form(
    retry_config: dict[str, object], expected: dict[str, int]
) -> None:
    class AsKeyword(falrt.App, retry_config=retry_config):
        pass

    given = retry_config

    class AsAttribute(falrt.App):
        retry_config = given

    assert describe(AsKeyword).settings.retry_config == expected
    assert describe(AsAttribute).settings.retry_config == expected


@pytest.mark.parametrize("bad", [
    {"timeout": {"attempts": 1}}, {"timeout": {"retries": -1}}, {"nonsense": {"retries": 1}},
])
def test_malformed_retry_configs_fail_at_class_creation(bad: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError), match="retry_config"):
        class Bad(falrt.App, retry_config=bad):
            pass


def test_requirement_stages_reach_the_deploy_header_in_order_and_come_back() -> None:
    class Staged(falrt.App):
        requirements = [["torch==2.5.0"], [], ["flash-attn", " einops "]]

    class Flat(falrt.App):
        requirements = ["torch==2.5.0", "flash-attn"]

    staged = describe(Staged)
    assert staged.requirements == ("torch==2.5.0", "", "flash-attn", "einops")
    assert describe(Flat).requirements == ("torch==2.5.0", "flash-attn")  # one stage, as ever
    header = control_pb2.DeployHeader.FromString(to_deploy_header(
        staged, bundle_sha256="0" * 64, bundle_size=0).SerializeToString())
    assert split_stages(header.settings.requirements) == (
        ("torch==2.5.0",), ("flash-attn", "einops"))


def test_mixed_requirement_forms_are_refused() -> None:
    with pytest.raises(TypeError, match="requirements"):
        class Mixed(falrt.App, requirements=["a", ["b"]]):
            pass


def test_fal_file_options_are_accepted_and_checked() -> None:
    class Files(falrt.App, app_files=["config.json"], app_files_ignore=[r"\.tmp$"],
                app_files_context_dir=".", local_python_modules=["helpers"]):
        pass

    assert Files.app_files == ["config.json"]
    with pytest.raises(ValueError, match="app_files_ignore"):
        class BadPattern(falrt.App, app_files_ignore=["(unclosed"]):
            pass


def test_unimplemented_fal_options_warn_and_change_nothing() -> None:
    with pytest.warns(FalOptionWarning, match="regions is not implemented"):
        class Regional(falrt.App, regions=["us-east"]):
            pass
    with pytest.warns(FalOptionWarning, match="data_mounts"):
        class Mounted(falrt.App):
            data_mounts = ["/data"]
    assert describe(Regional).settings == describe(Mounted).settings


def test_a_method_named_like_a_fal_option_is_no_option(recwarn: pytest.WarningsRecorder) -> None:
    class Images(falrt.App):
        @falrt.endpoint("/image")
        def image(self, input: Prompt) -> Answer:
            return Answer(result=input.prompt)

    assert not [w for w in recwarn if issubclass(w.category, FalOptionWarning)]


def test_private_logs_is_a_setting_that_travels_without_a_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    class Private(falrt.App, private_logs=True):
        pass

    assert not [w for w in recwarn if issubclass(w.category, FalOptionWarning)]
    settings = describe(Private).settings
    assert settings.private_logs
    message = control_pb2.AppSettings.FromString(settings_to_proto(settings).SerializeToString())
    assert settings_from_proto(message) == settings
    assert message.private_logs and not describe(MyTextApp).settings.private_logs
    with pytest.raises(TypeError, match="private_logs"):
        class Wrong(falrt.App, private_logs="yes"):
            pass


def test_unknown_options_are_still_refused() -> None:
    with pytest.raises(TypeError, match="unknown App option"):
        class Typo(falrt.App, keep_alvie=3):
            pass


def test_fal_realtime_declares_a_realtime_endpoint_answering_each_input() -> None:
    class Live(falrt.App):
        @falrt.realtime("/realtime")
        def shout(self, input: Prompt) -> Answer:
            return Answer(result=input.prompt.upper())

        with pytest.warns(FalOptionWarning, match="buffering"):
            @falrt.realtime("/async", buffering=4)
            async def echo(self, input: Prompt) -> Answer:
                return Answer(result=input.prompt)

    endpoints = Live.endpoints()
    assert {p: (e.kind, e.input_type, e.output_type) for p, e in endpoints.items()} == {
        "/realtime": (EndpointKind.REALTIME, Prompt, Answer),
        "/async": (EndpointKind.REALTIME, Prompt, Answer),
    }
    app = instantiate(Live)

    async def session(path: str) -> list[str]:
        async def inputs() -> AsyncIterator[Prompt]:
            for text in ("a", "b"):
                yield Prompt(prompt=text)

        handler = getattr(app, endpoints[path].name)
        return [answer.result async for answer in handler(inputs())]

    assert asyncio.run(session("/realtime")) == ["A", "B"]
    assert asyncio.run(session("/async")) == ["a", "b"]


def test_fal_realtime_refuses_options_fal_does_not_have() -> None:
    with pytest.raises(TypeError, match="bufering"):
        falrt.realtime("/realtime", bufering=4)


def test_fal_realtime_keeps_falrt_session_handlers() -> None:
    class Session(falrt.App):
        @falrt.realtime()
        async def chat(self, lines: AsyncIterator[Prompt]) -> AsyncIterator[Answer]:
            async for line in lines:
                yield Answer(result=line.prompt)

    assert Session.endpoints()["/realtime"].kind is EndpointKind.REALTIME
