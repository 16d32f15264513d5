"""The docker backend against the real engine: runners are containers of environment images.

Skipped, with the reason, only when no Docker engine answers (scripts/docker.sh starts one;
CI runs it). The base image is built once per machine and reused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

docker = pytest.importorskip("docker")

try:
    _engine = docker.from_env(timeout=600)
    _engine.ping()
except docker.errors.DockerException:
    pytest.skip("no Docker engine: run scripts/docker.sh", allow_module_level=True)

from falrt.client import SyncClient  # noqa: E402
from falrt.client.control import ControlClient  # noqa: E402
from falrt.images.base import build_base  # noqa: E402
from falrt.images.build import ENV_NAME, environment_key, falrt_sources  # noqa: E402
from tests.harness import ServerProcess, stop_cleanly, wait_for  # noqa: E402
from tests.test_docker_images import REGISTRY, spec  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(600)]

APP = '''
import os
import time
from pathlib import Path

import msgspec
import falrt


class In(msgspec.Struct):
    write: str = ""
    read: bool = False
    allocate_mb: int = 0
    sleep_s: float = 0


class Out(msgspec.Struct):
    version: int
    runner: str
    data: str


class Box(falrt.App):
    app_name = "{name}"
    machine_type = "XS"
    max_concurrency = 2
    keep_alive = 300

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        shared = Path("/data/shared.txt")
        if request.write:
            shared.write_text(request.write)
        if request.allocate_mb:
            hog = bytearray(request.allocate_mb * 2**20)  # more than XS's 512 MiB
            hog[::4096] = b"x" * len(hog[::4096])
        time.sleep(request.sleep_s)
        return Out(version={version}, runner=os.environ["FALRT_RUNNER_ID"],
                   data=shared.read_text() if request.read else "")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = build_base(spec()).ref
    root = tmp_path_factory.mktemp("docker")
    proc = ServerProcess(root / "data", root / "server.log", extra=[
        "--backend", "docker", "--docker-base", base, "--retry-backoff", "0.05",
    ]).start()
    yield proc
    stop_and_clean(proc)


def stop_and_clean(proc: ServerProcess) -> None:
    """Stops a docker-backed server and removes the runner containers it leaves running for
    its next start (they would wait the reconnect window, then exit); fails unless the
    server exited 0 (the containers are removed either way)."""
    try:
        stop_cleanly(proc)
    finally:
        for container in _engine.containers.list(all=True,
                                                  filters={"label": server_label(proc)}):
            container.remove(force=True)


def server_label(proc: ServerProcess) -> str:
    return f"falrt.server={(proc.data_dir / 'server-id').read_text().strip()}"


def deploy(server: ServerProcess, tmp_path: Path, name: str, version: int = 1) -> str:
    app = tmp_path / f"{name.replace('-', '_')}_{version}" / "box.py"
    app.parent.mkdir(parents=True, exist_ok=True)
    app.write_text(APP.format(name=name, version=version))
    return server.deploy(f"{app}::Box")


def container_of(runner_id: str) -> object:
    (found,) = _engine.containers.list(filters={"label": f"falrt.runner={runner_id}"})
    return found


def test_examples_run_in_containers_on_every_path(server: ServerProcess) -> None:
    hello = server.deploy("examples/hello.py::Hello")
    tokens = server.deploy("examples/stream.py::Tokens")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        assert client.run(hello, {"name": "box"}) == {"greeting": "Hello, box!"}
        assert client.subscribe(hello, {"name": "queue"}) == {"greeting": "Hello, queue!"}
        parts = list(client.stream(tokens, {"sentence": "in a box", "delay_s": 0}))
        assert [p["token"] for p in parts] == ["in", "a", "box"]
        (runner,) = control.list_runners("hello")
    container = container_of(runner.runner_id)
    config = container.attrs["HostConfig"]  # type: ignore[attr-defined]
    assert (config["NanoCpus"], config["Memory"]) == (10**9, 2**30)  # machine type S
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}  # type: ignore[attr-defined]
    assert mounts["/bundle"]["RW"] is False and mounts["/data"]["Name"] == "falrt-data"
    # Containers keep the gRPC runner link by default: no stream link listens for them.
    env = dict(v.partition("=")[::2] for v in container.attrs["Config"]["Env"])  # type: ignore[attr-defined]
    assert env["FALRT_SERVER"].rpartition(":")[2].isdigit(), env["FALRT_SERVER"]
    assert not env["FALRT_SERVER"].startswith("stream:")
    assert not (server.data_dir / "link").exists()


def test_a_code_only_redeploy_builds_nothing_and_serves_the_new_code(
    server: ServerProcess, tmp_path: Path
) -> None:
    first = deploy(server, tmp_path, "box", version=1)
    with SyncClient(server.address) as client:
        assert client.run(first, {})["version"] == 1
        images_before = {i.id for i in _engine.images.list()}
        app = tmp_path / "box_2" / "box.py"  # rolling: a new runner, same image
        app.parent.mkdir()
        app.write_text(APP.format(name="box", version=2))
        log = server.cli("deploy", f"{app}::Box").stderr
        assert client.run(first, {})["version"] == 2
    assert {i.id for i in _engine.images.list()} == images_before  # no new image
    assert "(cached," in log and "Step " not in log, log  # and no build step ran


REQUIREMENTS_APP = '''
import importlib.util

import msgspec
import falrt


class In(msgspec.Struct):
    pass


class Out(msgspec.Struct):
    importable: list[str]


class Reqs(falrt.App):
    app_name = "reqs"
    machine_type = "XS"
    requirements = {requirements!r}

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        return Out([m for m in ("six", "idna") if importlib.util.find_spec(m) is not None])
'''


def test_a_requirements_change_builds_one_new_layer(
    server: ServerProcess, tmp_path: Path
) -> None:
    app = tmp_path / "reqs.py"

    def deploy_with(requirements: list[str]) -> tuple[str, list[str]]:
        app.write_text(REQUIREMENTS_APP.format(requirements=requirements))
        done = server.cli("deploy", f"{app}::Reqs")
        with SyncClient(server.address) as client:
            endpoint = done.stdout.strip().splitlines()[-1]
            assert sorted(client.run(endpoint, {})["importable"]) == requirements
        with ControlClient(server.address) as control:
            live = [r for r in control.list_runners("reqs") if r.state in (5, 6)]
        image = container_of(live[-1].runner_id).image  # type: ignore[attr-defined]
        return done.stderr, image.attrs["RootFS"]["Layers"]

    # Both images are built by this test, one after the other, even when an earlier run left
    # them: a build reuses the newest cached layer of a step, and an image left by an earlier
    # run may sit on an older copy of the shim's layer than the one a build now picks.
    base_id = _engine.images.get(build_base(spec()).ref).id
    for requirements in (["six"], ["idna", "six"]):
        key = environment_key(base_id, requirements, falrt_sources())
        with contextlib.suppress(docker.errors.ImageNotFound):
            _engine.images.remove(f"{ENV_NAME}:{key}", force=True)
    _, before = deploy_with(["six"])
    log, after = deploy_with(["idna", "six"])
    # One new layer on top of the same layers; the build log shows the steps below it cached
    # and one pip install run.
    assert len(after) == len(before) and after[:-1] == before[:-1] and after[-1] != before[-1]
    built = [step.split(" : ", 1)[1] for step in log.split("Step ")[1:]
             if "Using cache" not in step and " : " in step]
    layers_built = [step for step in built if step.startswith(("RUN", "COPY", "ADD"))]
    assert len(layers_built) == 1 and layers_built[0].startswith("RUN pip install"), log
    assert "idna six" in layers_built[0] and "COPY falrt" in log, log


STAGED_APP = '''
import json
from pathlib import Path

import msgspec
import falrt


class In(msgspec.Struct):
    pass


class Out(msgspec.Struct):
    config: dict[str, str]
    modules: list[str]


class Staged(falrt.App):
    app_name = "staged"
    machine_type = "XS"
    requirements = [["six"], ["idna"]]
    app_files = ["configs"]
    app_files_context_dir = ".."

    def setup(self) -> None:
        self.config = json.loads(Path("../configs/model.json").read_text())

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        import idna
        import six
        return Out(self.config, [six.__name__, idna.__name__])
'''


def test_fal_install_stages_and_a_context_dir_above_the_app_work_in_containers(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "model.json").write_text('{"size": "small"}')
    (tmp_path / "apps").mkdir()
    app = tmp_path / "apps" / "staged.py"
    app.write_text(STAGED_APP)
    # The image is built by this deploy even when an earlier run left it (the steps may
    # come from the engine's build cache; the log shows them either way).
    base_id = _engine.images.get(build_base(spec()).ref).id
    key = environment_key(base_id, ["six", "", "idna"], falrt_sources())
    with contextlib.suppress(docker.errors.ImageNotFound):
        _engine.images.remove(f"{ENV_NAME}:{key}", force=True)
    log = server.cli("deploy", f"{app}::Staged").stderr
    assert log.index("installing stage 1/2: six") < log.index("installing stage 2/2: idna")
    with SyncClient(server.address) as client:
        assert client.run("local/staged", {}) == {
            "config": {"size": "small"}, "modules": ["six", "idna"]}


def test_a_killed_container_is_replaced_and_its_request_retried(
    server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = deploy(server, tmp_path, "victim")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        first = client.run(endpoint, {})["runner"]
        request_id = client.submit(endpoint, {"sleep_s": 3}).request_id
        wait_for(lambda: any(request_id in r.in_flight_request_ids
                             for r in control.list_runners("victim")), what="running")
        _engine.containers.get(f"falrt-{first}").kill()  # as `docker kill` does
        done = client.wait(request_id, timeout=120)
    assert done.error is None and done.output["runner"] != first


def test_data_is_shared_and_an_oom_kill_is_reported(
    server: ServerProcess, tmp_path: Path
) -> None:
    writer = deploy(server, tmp_path, "writer")
    reader = deploy(server, tmp_path, "reader")
    with SyncClient(server.address) as client, ControlClient(server.address) as control:
        client.run(writer, {"write": "written by another runner"})
        assert client.run(reader, {"read": True})["data"] == "written by another runner"
        hog = deploy(server, tmp_path, "hog")
        runner = client.run(hog, {})["runner"]
        request_id = client.submit(hog, {"allocate_mb": 900}, no_retry=True).request_id
        done = client.wait(request_id, timeout=120)
        assert done.error is not None
        ended = wait_for(lambda: next((r for r in control.list_runners("hog", [9])
                                       if r.runner_id == runner), None), what="the OOM kill")
    assert "OOM-killed" in ended.last_error and "512 MiB" in ended.last_error
    history = json.loads(server.cli("runners", "list", "--state", "terminated",
                                    "--output", "json").stdout)
    assert any("OOM-killed" in r.get("last_error", "") for r in history)


def test_a_runner_pulls_its_image_from_the_registry_when_the_host_lacks_it(
    tmp_path: Path,
) -> None:
    base = build_base(spec()).ref
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=[
        "--backend", "docker", "--docker-base", base, "--registry", f"{REGISTRY}/falrt-pull",
    ]).start()
    try:
        endpoint = deploy(proc, tmp_path, "pulled")  # built and pushed to the registry
        tags = httpx.get(f"http://{REGISTRY}/v2/falrt-pull/falrt-env/tags/list").json()["tags"]
        deploy(proc, tmp_path, "pulled", version=2)  # code only: the registry gets nothing new
        assert httpx.get(f"http://{REGISTRY}/v2/falrt-pull/falrt-env/tags/list").json()[
            "tags"] == tags
        with SyncClient(proc.address) as client, ControlClient(proc.address) as control:
            first = client.run(endpoint, {})["runner"]
            image = container_of(first).image  # type: ignore[attr-defined]
            proc.cli("runners", "kill", first)
            wait_for(lambda: not control.list_runners("pulled"), what="no runner left")
            for tag in image.tags:
                _engine.images.remove(tag, force=True)
            assert client.run(endpoint, {})["version"] == 2  # a new runner pulled it
            (runner,) = control.list_runners("pulled")
        states = [t.state for t in runner.transitions]
        assert states[:3] == [1, 2, 3]  # PENDING, IMAGE_PULL, SETUP
    finally:
        stop_and_clean(proc)


def test_a_restarted_server_adopts_its_running_containers(tmp_path: Path) -> None:
    base = build_base(spec()).ref
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=[
        "--backend", "docker", "--docker-base", base, "--retry-backoff", "0.05",
    ]).start()
    proc.listen = proc.address  # restarts listen where the runners dial
    foreign = None
    try:
        endpoint = deploy(proc, tmp_path, "survivor")
        with SyncClient(proc.address) as client, ControlClient(proc.address) as control:
            runner = client.run(endpoint, {})["runner"]
            container_id = container_of(runner).id  # type: ignore[attr-defined]
            request_id = client.submit(endpoint, {"sleep_s": 2}).request_id
            wait_for(lambda: any(request_id in r.in_flight_request_ids
                                 for r in control.list_runners("survivor")), what="running")
        # Beside it: a container of another server (never touched) and an ended one of this
        # server's (removed at the next start).
        foreign = _engine.containers.run(base, ["sleep", "300"], detach=True, labels={
            "falrt.runner": "r-foreign", "falrt.server": "srv-someone-else"})
        ended = _engine.containers.run(base, ["true"], detach=True, labels={
            "falrt.runner": "r-ended", "falrt.server": server_label(proc).partition("=")[2]})
        ended.wait()

        proc.kill()  # a crash: the runner loses its stream with a request in flight
        proc.start()
        with SyncClient(proc.address) as client, ControlClient(proc.address) as control:
            done = client.wait(request_id, timeout=120)  # retried, on the adopted runner
            assert done.error is None and done.output["runner"] == runner
            assert client.run(endpoint, {})["runner"] == runner
            assert [r.runner_id for r in control.list_runners("survivor")] == [runner]
        assert container_of(runner).id == container_id  # the same container throughout
        assert f"adopted runner {runner}" in proc.log()
        foreign.reload()
        assert foreign.status == "running"
        with pytest.raises(docker.errors.NotFound):
            ended.reload()

        proc.stop()  # a graceful restart leaves the runner to the next start as well
        proc.start()
        with SyncClient(proc.address) as client, ControlClient(proc.address) as control:
            assert client.run(endpoint, {})["runner"] == runner
            (info,) = control.list_runners("survivor")
        assert container_of(runner).id == container_id
        assert info.served >= 1
    finally:
        stop_and_clean(proc)
        if foreign is not None:
            foreign.remove(force=True)


OWN = '''
from pathlib import Path

import msgspec
import falrt


class In(msgspec.Struct):
    pass


class Out(msgspec.Struct):
    greeting: str


class Own(falrt.App):
    app_name = "own"
    dockerfile = """
FROM {base}
RUN echo "from the app's own image" > /etc/falrt-greeting
"""

    @falrt.endpoint("/")
    def run(self, request: In) -> Out:
        return Out(greeting=Path("/etc/falrt-greeting").read_text().strip())
'''


def test_an_app_may_bring_its_own_dockerfile_and_no_cache_rebuilds(
    server: ServerProcess, tmp_path: Path
) -> None:
    app = tmp_path / "own.py"
    app.write_text(OWN.format(base=build_base(spec()).ref))
    first = server.cli("deploy", f"{app}::Own")
    endpoint = first.stdout.strip().splitlines()[-1]
    with SyncClient(server.address) as client:
        assert client.run(endpoint, {}) == {"greeting": "from the app's own image"}
    same = server.cli("deploy", f"{app}::Own")  # nothing changed: no revision, no build
    assert "unchanged" in same.stderr and "(built," not in same.stderr
    again = server.cli("deploy", f"{app}::Own", "--force")  # a new revision: image cached
    assert "is cached" in again.stderr and "(cached," in again.stderr
    rebuilt = server.cli("deploy", f"{app}::Own", "--no-cache")
    assert "(built," in rebuilt.stderr
    with SyncClient(server.address) as client:
        assert client.run(endpoint, {}) == {"greeting": "from the app's own image"}
