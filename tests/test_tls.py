"""TLS end to end, on real servers: `falrt server --tls-*` with `falrt certs dev`'s files.

The CLI, both Python clients and a Node grpc-js client loaded from proto/ call a TLS server
(the runners the server starts dial it over TLS too, so every request that completes went
both ways); a plaintext client and one that does not trust the CA are refused; under mutual
TLS a client without a certificate is refused and the runners show their own certificate,
never the server's key. Keys go only to the server that issued them: a server in the test
that records call metadata receives no `authorization` from clients holding another
server's key.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from falrt import errors
from falrt.client import AsyncClient, SyncClient, credentials
from falrt.dev_certs import DevCerts, make
from tests.harness import FALRT, REPO, ServerProcess, stop_cleanly

pytestmark = pytest.mark.e2e

HELLO = "examples/hello.py::Hello"
LIFECYCLE = "tests/apps/lifecycle.py::Lifecycle"
NODE_DIR = REPO / "tests" / "node"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make(tmp_path_factory.mktemp("certs"))


def tls_args(certs: DevCerts) -> list[str]:
    return ["--tls-cert", str(certs.path("server.pem")), "--tls-key",
            str(certs.path("server.key"))]


def mtls_args(certs: DevCerts) -> list[str]:
    return [*tls_args(certs), "--tls-client-ca", str(certs.path("ca.pem")),
            "--tls-runner-cert", str(certs.path("runner.pem")),
            "--tls-runner-key", str(certs.path("runner.key"))]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts
               ) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tls-server")
    proc = ServerProcess(root / "data", root / "server.log", extra=tls_args(certs)).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: DevCerts
                ) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mtls-server")
    proc = ServerProcess(root / "data", root / "server.log", extra=mtls_args(certs)).start()
    yield proc
    stop_cleanly(proc)


def https(server: ServerProcess) -> str:
    return f"https://{server.address}"


def tls_cli(server: ServerProcess, certs: DevCerts, *args: str, mutual: bool = False,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI against `server` over TLS, the options after the subcommand's arguments
    as people type them (they win over the plain --host the harness puts before it)."""
    client = (["--tls-client-cert", str(certs.path("client.pem")),
               "--tls-client-key", str(certs.path("client.key"))] if mutual else [])
    return server.cli(*args, "--host", https(server), "--tls-ca", str(certs.path("ca.pem")),
                      *client, check=check)


@pytest.fixture(scope="module")
def hello(tls_server: ServerProcess, certs: DevCerts) -> str:
    out = tls_cli(tls_server, certs, "deploy", HELLO).stdout.strip().splitlines()
    return out[-1].strip()


def test_the_cli_deploys_and_calls_an_app_over_tls(
    tls_server: ServerProcess, certs: DevCerts, hello: str,
) -> None:
    out = tls_cli(tls_server, certs, "call", hello, "--data", '{"name": "tls"}').stdout
    assert json.loads(out) == {"greeting": "Hello, tls!"}  # queued, run by a TLS runner
    out = tls_cli(tls_server, certs, "call", "--sync", hello, "--data", '{"name": "s"}').stdout
    assert json.loads(out) == {"greeting": "Hello, s!"}
    listed = tls_cli(tls_server, certs, "apps", "list", "--output", "json").stdout
    assert "hello" in listed


def test_the_sync_client_submits_and_runs_over_tls(
    tls_server: ServerProcess, certs: DevCerts, hello: str,
) -> None:
    with SyncClient(https(tls_server), tls_ca=certs.path("ca.pem")) as client:
        assert client.submit(hello, {"name": "queued"}).get() == {"greeting": "Hello, queued!"}
        assert client.run(hello, {"name": "direct"}) == {"greeting": "Hello, direct!"}


def test_the_async_client_submits_over_tls_with_the_ca_from_the_environment(
    tls_server: ServerProcess, certs: DevCerts, hello: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FALRT_TLS_CA", str(certs.path("ca.pem")))

    async def call() -> Any:
        async with AsyncClient(https(tls_server)) as client:
            handle = await client.submit(hello, {"name": "aio"})
            return await handle.get()

    assert asyncio.run(call()) == {"greeting": "Hello, aio!"}


def test_a_plaintext_client_is_refused_by_a_tls_server(
    tls_server: ServerProcess, hello: str,
) -> None:
    with SyncClient(tls_server.address) as client, pytest.raises(errors.UnavailableError):
        client.run(hello, {"name": "plain"}, timeout=10)
    with grpc.insecure_channel(tls_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    result = tls_server.cli("call", hello, "--data", '{"name": "plain"}', check=False)
    assert result.returncode == 6, result.stderr  # the server cannot be reached


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
    tls_server: ServerProcess, hello: str,
) -> None:
    with SyncClient(https(tls_server)) as client, pytest.raises(errors.UnavailableError):
        client.run(hello, {"name": "untrusted"}, timeout=10)  # gRPC's default roots only


def test_under_mutual_tls_a_client_without_a_certificate_is_refused(
    mtls_server: ServerProcess, certs: DevCerts,
) -> None:
    with SyncClient(https(mtls_server), tls_ca=certs.path("ca.pem")) as client, \
            pytest.raises(errors.UnavailableError):
        client.run("local/hello", {"name": "anonymous"}, timeout=10)
    result = tls_cli(mtls_server, certs, "apps", "list", check=False)
    assert result.returncode == 6, result.stderr


def test_under_mutual_tls_clients_and_runners_with_certificates_work(
    mtls_server: ServerProcess, certs: DevCerts,
) -> None:
    endpoint = tls_cli(mtls_server, certs, "deploy", LIFECYCLE, mutual=True).stdout.split()[-1]
    with SyncClient(https(mtls_server), tls_ca=certs.path("ca.pem"),
                    tls_client_cert=certs.path("client.pem"),
                    tls_client_key=certs.path("client.key")) as client:
        out = client.submit(endpoint, {"seconds": 0}).get()
    environ = _environ(out["pid"])  # the runner's: it verified the server, showed its cert
    assert environ["FALRT_TLS_KEY_PEM"] == certs.path("runner.key").read_text()
    assert environ["FALRT_TLS_CERT_PEM"] == certs.path("runner.pem").read_text()
    assert environ["FALRT_TLS_ROOTS_PEM"] == certs.path("server.pem").read_text()
    server_key = certs.path("server.key").read_text()
    assert not any(server_key in value for value in environ.values())
    # The runner's link to the server: by default the stream link on a Unix socket (file
    # permissions guard it, not TLS); the gRPC port, over TLS, with --runner-link grpc.
    on_stream = os.environ.get("FALRT_RUNNER_LINK", "auto") != "grpc"
    assert environ["FALRT_SERVER"].startswith("stream:unix:") == on_stream, environ


def test_a_mutual_tls_server_refuses_to_start_without_a_runner_certificate(
    certs: DevCerts, tmp_path: Path,
) -> None:
    result = subprocess.run(
        [FALRT, "server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         *tls_args(certs), "--tls-client-ca", str(certs.path("ca.pem"))],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--tls-runner-cert" in result.stderr


class Recorder(grpc.GenericRpcHandler):
    """A gRPC server's handler that answers every call with an empty message and keeps
    each call's metadata: a server that did not issue the client's key."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append({k: str(v) for k, v in context.invocation_metadata()})
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
def stranger(certs: DevCerts) -> Iterator[tuple[Recorder, str, str]]:
    """A recording server on a plaintext and a TLS port: (recorder, plain, tls address)."""
    recorder = Recorder()
    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[recorder])
    plain = server.add_insecure_port("127.0.0.1:0")
    key_pair = (certs.path("server.key").read_bytes(), certs.path("server.pem").read_bytes())
    secure = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([key_pair]))
    server.start()
    yield recorder, f"127.0.0.1:{plain}", f"https://127.0.0.1:{secure}"
    server.stop(None)


def test_a_key_is_sent_only_to_the_server_that_issued_it(
    tls_server: ServerProcess, certs: DevCerts, stranger: tuple[Recorder, str, str],
) -> None:
    recorder, plain, secure = stranger
    assert credentials.key_for(tls_server.address)  # this process holds the TLS server's key
    ca = certs.path("ca.pem")
    submit_to(plain)
    submit_to(secure, tls_ca=ca)
    submit_to(f"localhost:{plain.rpartition(':')[2]}")
    cli = tls_server.cli("--host", secure, "--tls-ca", str(ca), "call", "local/hello",
                         check=False)
    assert len(recorder.calls) >= 4, cli.stderr
    assert all("authorization" not in metadata for metadata in recorder.calls)
    # The control: a key given explicitly does reach it, as call credentials.
    submit_to(secure, tls_ca=ca, key="k-given:secret")
    submit_to(plain, key="k-given:secret")
    assert [m.get("authorization") for m in recorder.calls[-2:]] == ["Key k-given:secret"] * 2


def test_a_key_recorded_with_login_goes_to_that_server_only(
    tls_server: ServerProcess, certs: DevCerts, stranger: tuple[Recorder, str, str],
) -> None:
    recorder, plain, secure = stranger
    ca = str(certs.path("ca.pem"))
    tls_server.cli("--host", secure, "--tls-ca", ca, "login", input="k-login:secret\n")
    submit_to(secure, tls_ca=ca)
    submit_to(plain)
    assert [m.get("authorization") for m in recorder.calls] == ["Key k-login:secret", None]
    assert "forgot" in tls_server.cli("--host", secure, "logout").stdout
    submit_to(secure, tls_ca=ca)
    assert recorder.calls[-1].get("authorization") is None


def submit_to(host: str, **connect: Any) -> None:
    with SyncClient(host, **connect) as client:
        client.submit("local/hello", {})


def test_a_node_grpc_js_client_from_the_proto_submits_over_tls(
    tls_server: ServerProcess, certs: DevCerts, hello: str,
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("Node.js and tests/node's packages are needed: run scripts/node.sh "
                    "(make test does)")
    key = credentials.key_for(tls_server.address)
    assert key is not None
    port = tls_server.address.rpartition(":")[2]
    out = subprocess.run(
        [node, str(NODE_DIR / "submit.js"), f"localhost:{port}", str(certs.path("ca.pem")),
         key, hello, json.dumps({"name": "node"})],
        capture_output=True, text=True, timeout=120, cwd=NODE_DIR)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["output"] == {"greeting": "Hello, node!"}
    assert result["statuses"][-1] == "REQUEST_STATUS_COMPLETED"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_under_mutual_tls_a_handler_calls_another_app_with_no_configuration(
    mtls_server: ServerProcess, certs: DevCerts,
) -> None:
    """The runner's client finds the server's address (https), its roots and the runner
    certificate in its environment, as the shim wrote them (docs/security.md, "Runner keys")."""
    hello = tls_cli(mtls_server, certs, "deploy", HELLO, "--app-name", "hello-relayed",
                    mutual=True).stdout.split()[-1]
    relay = tls_cli(mtls_server, certs, "deploy", "tests/apps/relay.py::Relay",
                    mutual=True).stdout.split()[-1]
    with SyncClient(https(mtls_server), tls_ca=certs.path("ca.pem"),
                    tls_client_cert=certs.path("client.pem"),
                    tls_client_key=certs.path("client.key")) as client:
        out = client.run(relay, {"endpoint_id": hello, "arguments": {"name": "mtls"}})
        assert out == {"answer": {"greeting": "Hello, mtls!"}}
        assert client.run(relay, {}, path="/key")["host"] == https(mtls_server)
