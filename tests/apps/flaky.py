"""A test app that fails on purpose, and leaves one marker file per attempt (its side
effects, counted by the tests)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import msgspec

import falrt


class Input(msgspec.Struct):
    key: str  # names this request's marker files
    marks: str  # folder of the marker files
    crash_first: bool = False  # the first attempt kills its own runner
    hang_first_s: float = 0.0  # the first attempt takes this long
    fail: bool = False  # every attempt raises
    verdict: str = ""  # "retry": ask for a retry when failing; "never": forbid one
    stop_runner: bool = False  # ask for this runner to be replaced


class Output(msgspec.Struct):
    attempt: int
    runner: str


class Flaky(falrt.App):
    app_name = "flaky"
    max_multiplexing = 4
    max_concurrency = 2
    keep_alive = 300
    request_timeout = 3

    @falrt.endpoint("/")
    def run(self, request: Input) -> Output:
        runner = os.environ["FALRT_RUNNER_ID"]
        attempt = _mark(Path(request.marks), request.key, runner)
        context = self.current_request
        assert context is not None
        if request.stop_runner:
            context.stop_runner = True
        if attempt == 1 and request.crash_first:
            os.kill(os.getpid(), signal.SIGKILL)
        if attempt == 1 and request.hang_first_s:
            time.sleep(request.hang_first_s)
        if request.verdict == "retry" and (request.fail or attempt == 1):
            context.needs_retry = True
            raise RuntimeError(f"attempt {attempt} asks for a retry")
        if request.verdict == "never":
            context.needs_retry = False
            raise RuntimeError("this failure must not be retried")
        if request.fail:
            raise RuntimeError(f"attempt {attempt} fails")
        return Output(attempt=attempt, runner=runner)


def _mark(folder: Path, key: str, runner: str) -> int:
    """Creates the next marker file of `key`; returns its attempt number."""
    attempt = len(list(folder.glob(f"{key}.*"))) + 1
    (folder / f"{key}.{attempt}.{runner}").touch(exist_ok=False)
    return attempt
