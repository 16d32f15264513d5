"""`falrt run`'s log streamer (cli/run.py): the app's runners' log lines on the terminal."""

from __future__ import annotations

import threading
import time

import click

from falrt.client.control import ControlClient
from falrt.errors import FalrtError
from falrt.v1 import common_pb2

POLL_S = 0.5  # how often the app's runners are listed, to follow the logs of new ones
ALL_STATES = [value for value in common_pb2.RunnerState.values() if value]


class RunnerLogs:
    """Prints the app's runners' log lines, each prefixed with a short runner id.

    A poller thread lists the app's runners every POLL_S (ended ones too) and starts one
    daemon thread per runner not seen before, which follows its log until the runner ends.
    `start` once; `stop` is idempotent and returns at once (a follower still in a stream
    ends with the runner or the channel).
    """

    def __init__(self, control: ControlClient, app_name: str) -> None:
        self._control = control
        self._app_name = app_name
        self._followers: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()  # the followers map, and whole lines on stdout
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll_until_stopped,
                                        name="falrt-run-poller", daemon=True)

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._stopped.set()

    def settle(self, timeout_s: float = 3.0) -> None:
        """Follows any runner not yet followed and waits (bounded) until the logs of the
        ended ones are printed: called before a failed first deploy is reported."""
        self.poll()
        deadline = time.monotonic() + timeout_s
        for thread in list(self._followers.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    def poll(self) -> None:
        try:
            runners = self._control.list_runners(self._app_name, ALL_STATES)
        except (FalrtError, ValueError):  # ValueError: the channel closed, we are stopping
            return  # the server is stopping, or the app not there yet: the next poll tells
        with self._lock:
            for info in runners:
                if info.runner_id not in self._followers:
                    thread = threading.Thread(target=self._follow, args=(info.runner_id,),
                                              name=f"falrt-run-{info.runner_id}", daemon=True)
                    self._followers[info.runner_id] = thread
                    thread.start()

    def _poll_until_stopped(self) -> None:
        while not self._stopped.is_set():
            self.poll()
            self._stopped.wait(POLL_S)

    def _follow(self, runner_id: str) -> None:
        prefix = click.style(f"[{runner_id.removeprefix('r-')[:6]}]", fg="cyan")
        try:
            for line in self._control.runner_logs(runner_id, follow=True):
                self._echo(f"{prefix} {line}")
        except (FalrtError, ValueError):  # ValueError: the channel closed, we are stopping
            return  # the server or the app went away: nothing more to print
        if not self._stopped.is_set():
            self._echo(f"{prefix} {click.style('runner ended', dim=True)}")

    def _echo(self, text: str) -> None:
        with self._lock:
            click.echo(text)
