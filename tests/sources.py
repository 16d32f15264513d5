"""App sources the tests write into files of their own (to deploy variations of them, or to
deploy them under other names): one definition each, shared by the test modules."""

from __future__ import annotations

# An app whose setup() always fails ("the model file is missing").
BROKEN_SETUP = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    x: int

class Broken(falrt.App):
    app_name = "broken"

    def setup(self) -> None:
        raise RuntimeError("the model file is missing")

    @falrt.endpoint("/")
    def run(self, request: Input) -> Input:
        return request
'''
