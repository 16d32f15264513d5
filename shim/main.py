"""The runner shim's entry point: `python -m falrt.shim`.

Order: route stdout/stderr/logging (`logcapture`), read settings (exit 2 when malformed),
put the bundle dir first on sys.path, with a TLS server write its PEM for `falrt.client`
(`_client_tls_files`), import the entrypoint, instantiate the App and run
`setup()` in the main thread with FALRT_RUNNER_STATE=SETUP (on any exception: traceback on
stderr, exit 3), then FALRT_RUNNER_STATE=RUNNING and serve on uvloop until shutdown. The
threads of sync handlers start with the per-thread settings setup() made (`threads`).
Exit codes: 0 after a shutdown or when the server went away, 2 bad settings, 3 import or
setup failed, 4 the server refused the runner.

This package imports nothing of the control plane: only falrt.sdk, falrt.errors, the
generated falrt.v1 code, grpc, uvloop and msgspec.
"""

from __future__ import annotations

import asyncio
import atexit
import faulthandler
import os
import shutil
import signal
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, TextIO

import uvloop

from falrt.sdk.app import App, instantiate
from falrt.sdk.loader import load_app_ref

from . import logcapture
from .parent import die_with_parent
from .session import RunnerSession
from .settings import SettingsError, ShimSettings
from .threads import handler_thread_initializer
from .tracing import HandlerTracing

__all__ = ["EXIT_BAD_SETTINGS", "EXIT_SETUP_FAILED", "main"]

EXIT_BAD_SETTINGS = 2
EXIT_SETUP_FAILED = 3
STATE_VAR = "FALRT_RUNNER_STATE"


def start_app(settings: ShimSettings) -> App:
    """Imports the entrypoint and runs `setup()`. Raises whatever user code raises.

    The bundle dir becomes the working directory (as on fal, an app reads its `app_files`
    by paths relative to its own file) and the first entry of sys.path.
    """
    bundle = str(settings.bundle_dir)
    os.chdir(bundle)
    if bundle in sys.path:
        sys.path.remove(bundle)
    sys.path.insert(0, bundle)
    _client_tls_files(settings)
    os.environ[STATE_VAR] = "SETUP"
    app = instantiate(load_app_ref(settings.entrypoint))
    app.setup()
    os.environ[STATE_VAR] = "RUNNING"
    return app


async def serve(session: RunnerSession) -> int:
    """Runs the session with SIGTERM/SIGINT starting its shutdown sequence."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, session.request_shutdown)
    return await session.run()


def _exit_now(code: int, stderr: TextIO) -> NoReturn:
    """Leaves without joining handler threads that shutdown abandoned."""
    stderr.flush()
    os._exit(code)


def _client_tls_files(settings: ShimSettings) -> None:
    """With a TLS server, `falrt.client` in the app's code dials it as the shim does: the
    roots (and the runner's certificate for mutual TLS) the server gave as PEM text are
    written to a private temporary directory, named by FALRT_TLS_CA (and
    FALRT_TLS_CLIENT_CERT/KEY), which the client reads; FALRT_TLS_SERVER_NAME is already
    set. Variables the app set itself (its secrets) are kept."""
    tls = settings.tls
    if tls is None or os.environ.get("FALRT_TLS_CA"):
        return
    folder = Path(tempfile.mkdtemp(prefix="falrt-client-tls-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, True)  # (an os._exit leaves it to tmp cleaning)
    files = {"FALRT_TLS_CA": ("roots.pem", tls.roots)}
    if tls.cert and tls.key:
        files |= {"FALRT_TLS_CLIENT_CERT": ("cert.pem", tls.cert),
                  "FALRT_TLS_CLIENT_KEY": ("key.pem", tls.key)}
    for var, (name, text) in files.items():
        path = folder / name
        path.write_text(text)
        os.environ[var] = str(path)


def main() -> int:
    """Runs a runner to completion; returns the process exit code."""
    real_stderr = logcapture.install()
    faulthandler.enable(file=real_stderr)  # a crash in native code still leaves a traceback
    try:
        settings = ShimSettings.from_environ()
    except SettingsError as exc:
        print(f"falrt.shim: {exc}", file=real_stderr)
        return EXIT_BAD_SETTINGS
    die_with_parent(settings.parent_pid)
    tracing = HandlerTracing.from_environ()  # (before setup(): its spans are exported too)
    try:
        app = start_app(settings)
    except BaseException:
        traceback.print_exc(file=real_stderr)
        return EXIT_SETUP_FAILED
    # One more thread when the app has a health check: its calls never wait for a request's.
    health = any(ep.health_check is not None for ep in type(app).endpoints().values())
    pool = ThreadPoolExecutor(settings.max_multiplexing + int(health),
                              thread_name_prefix="falrt-handler",
                              initializer=handler_thread_initializer())
    session = RunnerSession(settings, app, pool, tracing)
    code = uvloop.run(serve(session))
    tracing.shutdown()
    if session.threads_abandoned:
        return _exit_now(code, real_stderr)
    pool.shutdown(wait=True)
    return code
