"""Bare servers that bench/overhead.py measures falrt against, each in its own process.

    python bench/baselines.py grpc-echo  [--port 0]   # generic grpc.aio unary handler on bytes
    python bench/baselines.py grpc-mlp   [--port 0]   # the same, running examples/mlp.py's model
    python bench/baselines.py http-echo  [--port 0]   # raw asyncio HTTP/1.1 (keep-alive), echo
    python bench/baselines.py http-mlp   [--port 0]   # the same, running the model
    python bench/baselines.py asgi-echo  [--port 0]   # a bare ASGI callable on uvicorn, echo

Each prints `listening on PORT` once it serves and runs until it is terminated. All run on
uvloop. The model servers decode the request JSON into examples/mlp.py's `Input` (with its
validation), run the model inline on the event loop, and encode the `Output` as JSON: the
work falrt's runner does for one request, without falrt. The ASGI server is what falrt's HTTP
gateway stands on (uvicorn with uvloop and httptools) without any framework or routing: the
floor of an HTTP call through that stack (bench/gateway.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop

ECHO_METHOD = "/bench.Echo/Call"
Handler = Callable[[bytes], bytes]


def echo_handler() -> Handler:
    return lambda body: body


def mlp_handler() -> Handler:
    """Decode, run examples/mlp.py's model, encode: what a falrt runner does per request."""
    import msgspec

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import mlp  # type: ignore[import-not-found]  # examples/, put on the path just above
    import torch

    torch.set_num_threads(1)  # as MLP.setup() does
    model = mlp.build_model()
    device = str(next(model.parameters()).device)
    decoder = msgspec.json.Decoder(mlp.Input)
    encoder = msgspec.json.Encoder()

    def handle(body: bytes) -> bytes:
        request = decoder.decode(body)
        logits, label = mlp.predict(model, request.features)
        return encoder.encode(mlp.Output(logits=logits, label=label, device=device))

    handle(encoder.encode(mlp.Input(features=[0.0] * mlp.IN_FEATURES)))  # warm-up
    return handle


async def serve_grpc(handle: Handler, port: int) -> None:
    async def call(body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return handle(body)

    # No serializers: the method takes and returns raw bytes.
    method: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(call)
    service, name = ECHO_METHOD.strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {name: method})])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on {bound}", flush=True)
    await wait_for_sigterm()
    await server.stop(grace=None)


async def serve_http(handle: Handler, port: int) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while body := await read_http_request(reader):
                out = handle(body[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await wait_for_sigterm()
    server.close()


async def serve_asgi(handle: Handler, port: int) -> None:
    import socket

    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        out = handle(body)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    # Bound here, so that port 0 reports the port it got (uvicorn would print 0).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, loop="none", http="httptools", lifespan="off",
                            access_log=False, log_level="warning")
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])  # exits on SIGTERM


async def read_http_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of the next request on a keep-alive connection; None at its end."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def wait_for_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


SERVERS = {
    "grpc-echo": (serve_grpc, echo_handler),
    "grpc-mlp": (serve_grpc, mlp_handler),
    "http-echo": (serve_http, echo_handler),
    "http-mlp": (serve_http, mlp_handler),
    "asgi-echo": (serve_asgi, echo_handler),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="bare baseline servers for bench/overhead.py")
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve, make_handler = SERVERS[args.kind]
    handle = make_handler()
    uvloop.run(serve(handle, args.port))


if __name__ == "__main__":
    main()
