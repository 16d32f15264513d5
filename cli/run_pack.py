"""How `falrt run` packs and deploys its app (cli/run.py): in a fresh process per deploy, so
that the app file and its local modules are read anew each time (an in-process re-import
would keep stale modules, and user code never runs in `falrt run`'s own process after its
first import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from falrt.bundle import pack
from falrt.client.control import ControlClient
from falrt.errors import FalrtError
from falrt.v1 import control_pb2

from .deploy import build_header, load_app_class
from .errors import CliError, InvalidInput
from .render import say

PACK_FLAG = "--pack"  # `python -m falrt.cli.run_pack --pack ...`: the spare process of Packer


class PackFailed(InvalidInput):
    """Importing or packing the app failed (a syntax error, say); the message says how."""


def deploy_bundle(
    control: ControlClient, header: control_pb2.DeployHeader, bundle: bytes
) -> control_pb2.DeployResult:
    """Streams the deploy, printing its build logs; raises the deploy's FalrtError, or
    CliError when the server ended it without a result."""
    result: control_pb2.DeployResult | None = None
    for response in control.deploy(header, bundle):
        if response.WhichOneof("item") == "log":
            say(f"  {response.log.message}", style="dim")
        elif response.WhichOneof("item") == "result":
            result = response.result
    if result is None:
        raise CliError("the server ended the deploy without a result")
    return result


class Packer:
    """Packs the app in a fresh process per deploy, so that the app file and its local
    modules are read anew each time. One spare process is kept started, its imports done,
    waiting on its stdin: a reload pays only for importing the app and packing it. Main
    thread only; `close` (idempotent) ends the spare."""

    def __init__(self, path: Path, class_name: str | None, app_name: str) -> None:
        self.app_name = app_name
        self._argv = [sys.executable, "-m", __name__, PACK_FLAG, str(path.resolve()),
                      class_name or "", app_name]
        self._spare: subprocess.Popen[bytes] | None = None

    def warm(self) -> None:
        """Starts the spare process unless one is waiting."""
        if self._spare is None:
            self._spare = subprocess.Popen(self._argv, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def pack(self) -> tuple[control_pb2.DeployHeader, bytes]:
        """The deploy header (app name set) and the bundle; PackFailed with what importing
        or packing the app printed when that failed."""
        self.warm()
        assert self._spare is not None
        proc, self._spare = self._spare, None
        try:
            out, err = proc.communicate(b"go\n")
        except BaseException:  # Ctrl-C: it must not outlive us
            proc.kill()
            proc.wait()
            raise
        printed = err.decode(errors="replace").strip()
        size = int.from_bytes(out[:4], "big")
        if proc.returncode != 0 or len(out) < 4 + size or not size:  # an exit() at import
            raise PackFailed(printed or f"packing the app exited {proc.returncode} without "
                             "an answer")
        if printed:  # what the app printed while it was imported
            say(printed, style="dim")
        return control_pb2.DeployHeader.FromString(out[4:4 + size]), out[4 + size:]

    def close(self) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare.wait()
            self._spare = None


def _pack_main(path: str, class_name: str, app_name: str) -> int:
    """The spare process of `Packer`: waits for a line on stdin (end of file: not needed),
    imports and packs the app, and writes the header's size (4 bytes, big-endian), the
    header and the bundle to stdout; exit status 4 and the error on stderr when that fails."""
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the app prints goes to stderr, not into the answer
    if not sys.stdin.readline():
        return 0
    try:
        cls = load_app_class(Path(path), class_name or None)
        bundle = pack(Path(path), cls)
    except (CliError, FalrtError) as exc:
        print(exc, file=sys.stderr)
        return 4
    header = build_header(cls, bundle, app_name=app_name, message="falrt run").SerializeToString()
    answer.write(len(header).to_bytes(4, "big") + header + bundle.data)
    answer.close()
    return 0


if __name__ == "__main__" and sys.argv[1:2] == [PACK_FLAG]:
    sys.exit(_pack_main(*sys.argv[2:]))
