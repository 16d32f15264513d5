"""Test apps of the edge's input check (tests/test_input_check.py): one endpoint per kind of
input model, on an app that serves and on one whose setup always fails."""

from __future__ import annotations

import msgspec
from pydantic import BaseModel

import falrt


class Order(msgspec.Struct):
    item: str
    count: int = 1


class LaxOrder(BaseModel):  # pydantic's lax mode: "3" is a count of 3
    item: str
    count: int = 1


class Receipt(msgspec.Struct):
    line: str


class Picky(falrt.App):
    app_name = "picky"
    keep_alive = 60
    max_concurrency = 1

    @falrt.endpoint("/")
    def order(self, request: Order) -> Receipt:
        return Receipt(f"{request.count} x {request.item}")

    @falrt.endpoint("/lax")
    def lax(self, request: LaxOrder) -> Receipt:
        return Receipt(f"{request.count} x {request.item}")


class BrokenPicky(Picky):
    app_name = "broken-picky"

    def setup(self) -> None:
        raise RuntimeError("model weights missing")
