"""Where webhooks may go (falrt/server/queue/webhook_targets.py): the address rule as a
table, every spelling of an address, and the operator's allowed networks."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from falrt import errors
from falrt.server.queue.webhook_targets import TargetPolicy, literal_address

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("169.254.169.254.", "169.254.169.254"),
    ("example.com", None),
    ("1.example", None),
    ("", None),
])
def test_an_address_is_read_in_every_spelling_a_resolver_takes(
    host: str, address: str | None
) -> None:
    found = literal_address(host)
    assert (str(found) if found is not None else None) == address


@pytest.mark.parametrize(("address", "refused"), [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),  # loopback
    ("169.254.169.254", True), ("fe80::1", True),  # link-local, cloud metadata
    ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True), ("fd00::1", True),
    ("100.64.0.1", True),  # shared (carrier-grade NAT)
    ("0.0.0.0", True), ("::", True), ("240.0.0.1", True), ("224.0.0.1", True),
    ("8.8.8.8", False), ("2606:4700::1111", False), ("::ffff:8.8.8.8", False),
])
def test_only_public_addresses_are_allowed_by_default(address: str, refused: bool) -> None:
    why = TargetPolicy().refusal(ipaddress.ip_address(address))
    assert bool(why) is refused and (not why or "--webhook-allow" in why)


def test_an_operator_allows_named_networks_only() -> None:
    policy = TargetPolicy(["10.1.0.0/16", "fd00::/8"])
    assert policy.refusal(ipaddress.ip_address("10.1.2.3")) == ""
    assert policy.refusal(ipaddress.ip_address("fd00::5")) == ""
    assert policy.refusal(ipaddress.ip_address("10.2.0.1")) != ""
    with pytest.raises(ValueError):
        TargetPolicy(["not-a-network"])


def test_a_url_is_checked_at_submit_when_its_host_is_an_address() -> None:
    policy = TargetPolicy()
    for url in ("http://127.1:8080/hook", "https://[::ffff:169.254.169.254]/x",
                "http://0x0a.0.0.1/"):
        with pytest.raises(errors.InvalidArgumentError, match="webhook_url is refused"):
            policy.check_url(url)
    policy.check_url("https://hooks.example.com/x")  # a name: checked when sending
    policy.check_url("http://8.8.8.8/x")


def test_a_name_is_resolved_and_refused_when_any_of_its_addresses_is() -> None:
    async def scenario() -> None:
        with pytest.raises(ConnectionRefusedError, match="not a public address"):
            await TargetPolicy().resolve("localhost", 80)
        allowed = await TargetPolicy(["127.0.0.0/8", "::1/128"]).resolve("localhost", 80)
        assert allowed.is_loopback

    asyncio.run(scenario())
