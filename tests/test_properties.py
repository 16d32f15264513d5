"""Properties of the server's edges under hostile input (hypothesis; strategies in
tests/strategies.py).

- Every public RPC (Queue, Control, RunnerLink, health checking, reflection), sent any
  message of its request type, or bytes that are no valid message, with the admin key, no
  key or a bad one: the answer is a status the server chose (never UNKNOWN or INTERNAL), and
  afterwards the server is alive (health SERVING), still serves (ListApps, and `hello`
  answers a Run), logged no traceback, and wrote nothing outside its data directory.
- Bundle extraction, as a function (many cases) and through Deploy (fewer): a hostile
  bundle (names that escape, links, devices, lying sizes and PAX records, damaged headers
  and gzip, bombs) is extracted inside its folder as regular files and folders only, or
  refused with INVALID_ARGUMENT leaving nothing behind; nothing lands anywhere else.

The server runs with HOME, TMPDIR and its working directory in a folder of the test's, so
"nothing written outside" is a comparison of that folder before and after each case. Case
counts come from the hypothesis profile: `ci` (tests/conftest.py) in `make test`, `fuzz`
in `make fuzz` (bench/fuzz.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import event, given
from hypothesis import strategies as st

from falrt.bundle import unpack
from falrt.client import credentials
from falrt.errors import InvalidArgumentError
from falrt.streamlink import HEADER, MESSAGE, STATUS
from falrt.v1 import (
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    files_pb2,
    queue_pb2,
    queue_pb2_grpc,
    runner_pb2,
)
from tests.harness import ServerProcess, stop_cleanly
from tests.strategies import MARKER, bundles, gzip_bomb, messages, raw_requests

CALL_TIMEOUT_S = 5.0  # a call that streams on (Watch of a live request) ends here, by design
BROKEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)
UNIT_MAX_BYTES = 64 * 1024
SERVER_MAX_BUNDLE_BYTES = 256 * 1024 * 1024
HEX_NAME = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Method:
    """One RPC as the wire sees it."""

    path: str  # "/falrt.v1.Queue/Submit"
    request: Descriptor
    client_streaming: bool
    server_streaming: bool

    def __str__(self) -> str:
        return self.path.rpartition(".")[2].replace("/", ".")


METHODS = [
    Method(f"/{service.full_name}/{method.name}", method.input_type, method.client_streaming,
           method.server_streaming)
    for module in (queue_pb2, control_pb2, files_pb2, runner_pb2, health_pb2, reflection_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    # Health.Watch streams forever by design: each case would only wait for its deadline.
    if method.full_name != "grpc.health.v1.Health.Watch"
]


# --- bundle extraction, as a function -----------------------------------------------------

def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[str, int]]:
    """Every path under `root` (links not followed, `skip` subtrees left out): its kind and
    size."""
    found: dict[str, tuple[str, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in dirs + files:
            path = Path(folder, name)
            if path in skip:
                continue
            info = path.lstat()
            kind = stat.filemode(info.st_mode)[0]
            found[str(path.relative_to(root))] = (kind, 0 if kind == "d" else info.st_size)
    return found


def escapes(start: Path) -> list[Path]:
    """Files named with the MARKER in `start`'s ancestors (where `../` and absolute names
    lead) and /etc."""
    return [path for folder in (*start.parents, Path("/etc"))
            for path in folder.glob(f"{MARKER}*")]


def without_names(error: str) -> str:
    """An error about a bundle, its entry's name left out: a statistics line (`event`)."""
    return re.sub(r"entry .*?:", "entry …:", error)[:60]


def assert_plain_tree(folder: Path, max_bytes: int) -> None:
    """`folder` holds regular files and folders only, within `max_bytes` in all."""
    total = 0
    for kind, size in tree(folder).values():
        assert kind in ("-", "d"), f"{folder} holds a {kind!r}: {tree(folder)}"
        total += size
    assert total <= max_bytes


@pytest.mark.unit
@given(data=bundles(bomb_bytes=UNIT_MAX_BYTES + 1))
def test_unpack_extracts_inside_its_folder_or_refuses_and_leaves_nothing(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        dest = sandbox / "a" / "b" / "c" / "dest"  # ../../../ leads back to the sandbox
        dest.parent.mkdir(parents=True)
        (sandbox / "outside").mkdir()
        (sandbox / "outside" / "kept.txt").write_text("kept")
        before = tree(sandbox)
        try:
            unpack(data, dest, max_bytes=UNIT_MAX_BYTES, max_files=8)
        except InvalidArgumentError as exc:
            event(without_names(f"refused: {exc}"))
            assert not dest.exists()
        else:
            event("extracted")
            assert_plain_tree(dest, UNIT_MAX_BYTES)
        assert tree(sandbox, skip=(dest,)) == before
        assert not escapes(dest)


# --- a real server in a folder of its own --------------------------------------------------

class World:
    """A server whose HOME, TMPDIR and working directory are folders under `root`, `hello`
    deployed on it, and a channel to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.server = ServerProcess(self.data_dir, root / "server.log")
        self.admin = ""
        self.channel: grpc.Channel | None = None
        self._log_seen = 0
        self._tree: dict[str, tuple[str, int]] = {}

    def start(self) -> None:
        home = self.root / "home"
        with pytest.MonkeyPatch.context() as patch:  # the server's environment and cwd only
            for name in ("home", "tmp", "cwd"):
                (self.root / name).mkdir()
            patch.setenv("HOME", str(home))
            patch.setenv("TMPDIR", str(self.root / "tmp"))
            for variable, folder in (("XDG_DATA_HOME", ".local/share"),
                                     ("XDG_CONFIG_HOME", ".config"),
                                     ("XDG_CACHE_HOME", ".cache")):
                patch.setenv(variable, str(home / folder))
            patch.chdir(self.root / "cwd")
            self.server.start()
        admin = credentials.key_for(self.server.address)
        assert admin is not None
        self.admin = admin
        self.server.deploy("examples/hello.py::Hello")
        self.channel = grpc.insecure_channel(self.server.address)
        self.check_serving()
        self._tree = self.outside()
        self._log_seen = len(self.server.log())

    def begin(self) -> None:
        """Starts a case: what the server logged before is not this case's."""
        self._log_seen = len(self.server.log())

    def metadata(self, key: str | None) -> list[tuple[str, str]]:
        return [] if key is None else [("authorization", f"Key {key}")]

    def outside(self) -> dict[str, tuple[str, int]]:
        """The tree outside the data directory (the log, which grows, left out)."""
        return tree(self.root, skip=(self.data_dir, self.server.log_path))

    def check(self) -> None:
        """The properties every case must leave true."""
        self.check_serving()
        self.check_log()
        assert self.outside() == self._tree, "the server wrote outside its data directory"
        self.check_data_dir()
        assert not escapes(self.data_dir / "bundles" / "x")

    def check_serving(self) -> None:
        assert self.server.is_running(), f"the server exited; log:\n{self.server.log()[-3000:]}"
        assert self.channel is not None
        health = health_pb2_grpc.HealthStub(self.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        metadata = self.metadata(self.admin)
        control = control_pb2_grpc.ControlStub(self.channel)
        apps = control.ListApps(control_pb2.ListAppsRequest(), metadata=metadata,
                                timeout=CALL_TIMEOUT_S)
        assert "hello" in [app.name for app in apps.apps]
        queue = queue_pb2_grpc.QueueStub(self.channel)
        run = queue.Run(queue_pb2.RunRequest(
            endpoint_id="local/hello",
            input=common_pb2.Payload(data=b'{"name": "fuzz"}', content_type="application/json"),
        ), metadata=metadata, timeout=30)
        assert b"Hello, fuzz!" in run.output.data

    def check_log(self) -> None:
        """No record logged since the last check holds a traceback."""
        log = self.server.log()
        new, self._log_seen = log[self._log_seen:], len(log)
        starts = [match.start() for match in LOG_RECORD.finditer(new)] + [len(new)]
        for start, end in itertools.pairwise(starts):
            record = new[start:end]
            if "Traceback" in record:
                raise AssertionError(f"the server logged a traceback:\n{record}")

    def check_data_dir(self) -> None:
        """bundles/ holds bundle folders (named by their SHA-256) of regular files and
        folders only; nothing else in the data directory carries the MARKER."""
        bundles_dir = self.data_dir / "bundles"
        for entry in bundles_dir.iterdir():
            assert HEX_NAME.match(entry.name) and entry.is_dir() and not entry.is_symlink(), \
                f"bundles/ holds {entry.name!r}"
            assert_plain_tree(entry, SERVER_MAX_BUNDLE_BYTES)
        marked = [path for path in tree(self.data_dir, skip=(bundles_dir,)) if MARKER in path]
        assert not marked, f"the data directory holds {marked}"

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        stop_cleanly(self.server)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("properties"))
    try:
        world.start()
        yield world
    finally:
        world.close()


# --- every public RPC ---------------------------------------------------------------------

def _same(data: bytes) -> bytes:
    return data


def call(channel: grpc.Channel, method: Method, requests: list[bytes],
         metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """Sends `requests` (serialized; the first only, unless the method takes a stream) and
    reads every answer; returns the status it ends with and its details."""
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    stub = kinds[method.client_streaming, method.server_streaming](
        method.path, request_serializer=_same, response_deserializer=_same)
    try:
        answer = stub(iter(requests) if method.client_streaming else requests[0],
                      metadata=metadata, timeout=CALL_TIMEOUT_S)
        if method.server_streaming:
            for _ in answer:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
_BAD_KEYS = st.one_of(
    st.sampled_from([None, "", ":", "k-0:", "k-0000000000000000:not-the-secret"]), _PRINTABLE)
# The admin key in three cases of four (the guard refuses the others before any method
# runs), else none or a bad one.
KEYS = st.integers(0, 3).flatmap(lambda n: st.just("admin") if n else _BAD_KEYS)


def key_of(world: World, key: str | None) -> str | None:
    return world.admin if key == "admin" else key


def assert_handled(method: Method, outcome: tuple[grpc.StatusCode, str]) -> None:
    code, details = outcome
    assert code not in BROKEN, f"{method} answered {code.name}: {details}"


def method_params() -> list[object]:
    return [pytest.param(method, id=str(method)) for method in METHODS]


def send_case(world: World, method: Method, requests: list[bytes], key: str | None) -> None:
    """One case: the call must end with a status the server chose, then `World.check`."""
    assert world.channel is not None
    world.begin()
    outcome = call(world.channel, method, requests, world.metadata(key_of(world, key)))
    event(outcome[0].name)
    assert_handled(method, outcome)
    world.check()


@pytest.mark.e2e
@pytest.mark.parametrize("method", method_params())
@given(data=st.data(), key=KEYS)
def test_any_request_message_gets_a_chosen_status_and_the_server_serves_on(
    world: World, method: Method, data: st.DataObject, key: str | None
) -> None:
    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
    requests = [data.draw(messages(method.request)).SerializeToString() for _ in range(count)]
    send_case(world, method, requests, key)


@pytest.mark.e2e
@given(method=st.sampled_from(METHODS),
       data=st.data(), key=KEYS)
def test_request_bytes_that_are_no_valid_message_leave_the_server_serving(
    world: World, method: Method, data: st.DataObject, key: str | None
) -> None:
    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
    requests = [data.draw(raw_requests(method.request)) for _ in range(count)]
    send_case(world, method, requests, key)


def method(path: str) -> Method:
    return next(m for m in METHODS if m.path == path)


# Cases the properties found, kept as a table: the method and the request bytes.
FOUND = [
    # An unknown RunnerState number in the filter was a ValueError: INTERNAL.
    pytest.param("/falrt.v1.Control/ListRunners",
                 control_pb2.ListRunnersRequest(states=[-74622562]).SerializeToString(),
                 id="ListRunners-negative-state"),
    pytest.param("/falrt.v1.Control/ListRunners",
                 control_pb2.ListRunnersRequest(states=[1, 10]).SerializeToString(),
                 id="ListRunners-state-10"),
    # A streamed message that does not parse was a DecodeError in the method: INTERNAL.
    pytest.param("/falrt.v1.Queue/Realtime", b"\n\x00\x00", id="Realtime-cut-message"),
    pytest.param("/falrt.v1.Control/Deploy", b"\x08", id="Deploy-cut-varint"),
    # A unary request that does not parse was gRPC's UNKNOWN and a logged traceback, before
    # any check (with or without a key); so was a runner's first message, and reflection's.
    pytest.param("/falrt.v1.Control/ListApps", b"\xff\xff\xff", id="ListApps-corrupt"),
    pytest.param("/falrt.v1.Queue/Submit", b"\x0a\x05ab", id="Submit-cut-string"),
    pytest.param("/falrt.v1.RunnerLink/Attach", b"\x0a\xff", id="Attach-cut-hello"),
    pytest.param("/grpc.health.v1.Health/Check", b"\xff", id="Health-Check-corrupt"),
    pytest.param("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", b"\x0a",
                 id="Reflection-cut-message"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("path", "request_bytes"), FOUND)
def test_requests_the_properties_found_are_invalid_arguments(
    world: World, path: str, request_bytes: bytes
) -> None:
    assert world.channel is not None
    world.begin()
    code, details = call(world.channel, method(path), [request_bytes],
                         world.metadata(world.admin))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    world.check()


@pytest.mark.e2e
def test_health_lists_every_service(world: World) -> None:
    """grpcio's asyncio health servicer leaves List unimplemented (UNIMPLEMENTED, and a
    traceback logged for every call); falrt's lists each service's status, and each app's
    (docs/observability.md, "Health")."""
    assert world.channel is not None
    world.begin()
    stub = health_pb2_grpc.HealthStub(world.channel)
    listed = stub.List(health_pb2.HealthListRequest(), timeout=CALL_TIMEOUT_S)
    assert {name: status.status for name, status in listed.statuses.items()} == {
        name: health_pb2.HealthCheckResponse.SERVING
        for name in ("", "falrt.v1.Queue", "falrt.v1.Control", "falrt.v1.Files",
                     "falrt.app/hello")}
    world.check()


# --- the stream link's socket (runners of the process backend, docs/runners.md) -------------

STREAM_LINK = re.compile(r"runners dial the stream link at stream:unix:(\S+)")


def _frame(body: bytes, kind: int = MESSAGE) -> bytes:
    return HEADER.pack(kind, len(body)) + body


def link_bytes() -> st.SearchStrategy[bytes]:
    """What a process that is not a runner may send the stream link: frames of runner
    messages (any, or bytes that are none), frames of any kind and length, random bytes."""
    runner_message = runner_pb2.RunnerMessage.DESCRIPTOR
    frames = st.lists(st.one_of(
        messages(runner_message).map(lambda m: _frame(m.SerializeToString())),
        raw_requests(runner_message).map(_frame),
        st.tuples(st.binary(max_size=16), st.integers(0, 255)).map(lambda f: _frame(*f)),
    ), min_size=1, max_size=3).map(b"".join)
    return st.one_of(frames, frames.flatmap(lambda data: st.integers(0, len(data)).map(
        lambda n: data[:n])), st.binary(max_size=64))


async def stream_link_answer(path: str, sent: bytes) -> bytes:
    """What the stream link at `path` answers `sent` and a half-close with, to its end (the
    server may refuse, answer and close before it has read all of `sent`)."""
    reader, writer = await asyncio.open_unix_connection(path)
    answer = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(sent)
            writer.write_eof()
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while chunk := await reader.read(65536):
                answer += chunk
    except ConnectionError:
        pass  # (the server closed with `sent` unread: what it wrote before is `answer`)
    finally:
        writer.close()
    return answer


@pytest.mark.e2e
@given(sent=link_bytes())
def test_any_bytes_on_the_stream_link_get_a_chosen_status_and_the_server_serves_on(
    world: World, sent: bytes
) -> None:
    found = STREAM_LINK.search(world.server.log())
    if found is None:  # (FALRT_RUNNER_LINK=grpc in the tests' environment)
        pytest.skip("the server's runners use the gRPC link")
    world.begin()
    answer = asyncio.run(stream_link_answer(found.group(1), sent))
    kind, length = HEADER.unpack_from(answer)
    assert (kind, len(answer)) == (STATUS, HEADER.size + length), answer
    code = next(c for c in grpc.StatusCode if c.value[0] == answer[HEADER.size])
    event(code.name)
    assert code not in BROKEN, answer
    world.check()


# --- bundle extraction, through Deploy ------------------------------------------------------

def deploy(world: World, bundle: bytes) -> tuple[grpc.StatusCode, str]:
    """Deploys `bundle` as the app `fuzzed` whose entrypoint module no bundle here has, so a
    bundle that unpacks still stops before any build: the answer is INVALID_ARGUMENT."""
    header = control_pb2.DeployHeader(
        app_name="fuzzed", entrypoint="not_in_any_bundle:App",
        bundle_sha256=hashlib.sha256(bundle).hexdigest(), bundle_size=len(bundle),
        endpoints=[control_pb2.EndpointSpec(path="/", name="run",
                                            kind=control_pb2.ENDPOINT_KIND_UNARY)])
    chunks = [bundle[i:i + 1024 * 1024] for i in range(0, len(bundle), 1024 * 1024)]
    requests = [control_pb2.DeployRequest(header=header),
                *(control_pb2.DeployRequest(chunk=chunk) for chunk in chunks)]
    assert world.channel is not None
    control = control_pb2_grpc.ControlStub(world.channel)
    try:
        for _ in control.Deploy(iter(requests), metadata=world.metadata(world.admin),
                                timeout=60):
            pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.e2e
@given(bundle=bundles(bomb_bytes=1024 * 1024))
def test_a_deployed_hostile_bundle_is_refused_or_kept_inside_its_folder(
    world: World, bundle: bytes
) -> None:
    world.begin()
    code, details = deploy(world, bundle)
    event(without_names(details))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    world.check()


@pytest.mark.e2e
def test_a_gzip_bomb_is_refused_at_the_bundle_limit(world: World) -> None:
    bomb = gzip_bomb(SERVER_MAX_BUNDLE_BYTES + 1)
    assert len(bomb) < 1024 * 1024
    world.begin()
    code, details = deploy(world, bomb)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than" in details
    world.check()
