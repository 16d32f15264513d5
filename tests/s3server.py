"""A real S3 endpoint for the S3 file store's tests: `moto_server` (moto[server], a dev
dependency), an HTTP server speaking the S3 REST API, started as its own process.

MinIO and Ceph's radosgw (Debian's needs a whole Ceph cluster) do not install from the
registries this project uses; moto's server implements multipart uploads, ranged GETs, object
metadata and listing over real HTTP, which is what `falrt/files/s3.py` uses.

The fixture sets the AWS_* credentials for the test process (and so for the servers it
starts): a random secret, which tests assert never reaches a log.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.harness import wait_for

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")


@dataclass
class S3Server:
    """A running moto_server: its URL, and the credentials the test process uses."""

    endpoint: str
    secret_key: str

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self) -> str:
        """A fresh, empty bucket (each test its own: nothing is shared between tests)."""
        name = f"falrt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _answers(endpoint), timeout=60,
                 what="moto_server to answer")
        assert proc.poll() is None, f"moto_server exited: {log.read_text()}"
        secret = secrets.token_hex(20)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", "falrt-test")
            env.setenv("AWS_SECRET_ACCESS_KEY", secret)
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            yield S3Server(endpoint, secret)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(endpoint: str) -> bool:
    try:
        httpx.get(endpoint, timeout=1)
    except httpx.HTTPError:
        return False
    return True
