"""The smallest falrt app: a typed input, a typed output, and a log line.

    falrt deploy examples/hello.py::Hello
    falrt call local/hello --data '{"name": "world"}'
"""

from __future__ import annotations

import msgspec

import falrt


class Input(msgspec.Struct):
    name: str


class Output(msgspec.Struct):
    greeting: str


class Hello(falrt.App):
    app_name = "hello"
    keep_alive = 300
    max_multiplexing = 4

    def setup(self) -> None:
        # Runs once per runner, before the first request: load models here.
        self.template = "Hello, {name}!"

    @falrt.endpoint("/")
    def greet(self, request: Input) -> Output:
        # Printed lines are captured per request and reach the watcher as logs.
        context = self.current_request
        request_id = context.request_id if context is not None else "-"
        print(f"greeting {request.name} (request {request_id})")
        return Output(greeting=self.template.format(name=request.name))
