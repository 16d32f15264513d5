"""A real falrt server serving TLS on its gRPC port and fal's HTTP APIs on an HTTPS listener,
with a certificate the test made (`falrt.dev_certs`): what the HTTP tests start."""

from __future__ import annotations

import re
from pathlib import Path

from falrt.dev_certs import DevCerts
from tests.harness import ServerProcess

HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")
HTTP_QUEUE_LISTENING = re.compile(r"falrt http queue listening on (\S+)")


def start(root: Path, certs: DevCerts, *extra: str) -> ServerProcess:
    """A started server in `root` with TLS and `--http-listen 127.0.0.1:0` (and `extra`)."""
    tls = ["--tls-cert", str(certs.path("server.pem")), "--tls-key", str(certs.path("server.key"))]
    return ServerProcess(root / "data", root / "server.log",
                         extra=[*tls, "--http-listen", "127.0.0.1:0", *extra]).start()


def gateway(server: ServerProcess) -> str:
    """HOST:PORT of the server's HTTPS listener."""
    return server.wait_for_output(HTTP_LISTENING).group(1)
