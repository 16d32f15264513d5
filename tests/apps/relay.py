"""A test app that calls other apps from its handler (docs/runners.md, "Calling other apps"):
`falrt.client` with no arguments, as a handler gets it from its runner's environment."""

from __future__ import annotations

import os
from typing import Any

import msgspec

import falrt
from falrt.client import SyncClient
from falrt.client.control import ControlClient


class Call(msgspec.Struct):
    endpoint_id: str
    arguments: dict[str, Any]


class Nothing(msgspec.Struct):
    pass


class Answer(msgspec.Struct):
    answer: Any


class Refusal(msgspec.Struct):
    error: str
    message: str = ""


class Given(msgspec.Struct):
    key: str
    host: str
    runner: str


class Relay(falrt.App):
    app_name = "relay"
    keep_alive = 300

    @falrt.endpoint("/")
    def relay(self, request: Call) -> Answer:
        with SyncClient() as client:
            return Answer(client.run(request.endpoint_id, request.arguments))

    @falrt.endpoint("/control")
    def control(self, request: Nothing) -> Refusal:
        """What the control plane answers the runner's key."""
        try:
            with ControlClient() as control:
                control.list_apps()
        except Exception as exc:
            return Refusal(type(exc).__name__, str(exc))
        return Refusal("")

    @falrt.endpoint("/key")
    def key(self, request: Nothing) -> Given:
        """The runner's key, its id and where its client dials: the test checks that the
        key dies with the runner and is shown nowhere else."""
        return Given(os.environ.get("FALRT_KEY", ""), os.environ.get("FALRT_HOST", ""),
                     os.environ["FALRT_RUNNER_ID"])
