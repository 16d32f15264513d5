"""Where a webhook may be sent: public addresses only, unless the operator allows more.

A webhook URL is the caller's, and the server POSTs to it signed: it must not reach the
server's own machine or network. The rule:

- An address is refused unless it is global (`ipaddress`'s `is_global`): loopback,
  link-local (cloud metadata at 169.254.169.254 included), private, shared (100.64/10),
  unspecified, reserved and documentation ranges are refused, and so is multicast. An
  IPv4-mapped IPv6 address is judged as its IPv4 address.
- Networks the operator names (`falrt server --webhook-allow CIDR`, for receivers on
  premises) are allowed even when not global.
- At Submit, a host that is an address is checked in every spelling a resolver takes
  (`127.1`, `0x7f.0.0.1`, `2130706433`, `[::ffff:127.0.0.1]`): a name is checked later.
- At each delivery the host is resolved; if any address it resolves to is refused, the
  delivery is abandoned; else the POST goes to the address that was checked (the name is
  kept for the Host header and TLS), so a name that changes between the check and the
  connection cannot lead elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from falrt import errors

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetPolicy:
    """The address rule of webhooks, with the operator's allowed networks. Stateless."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        """Raises ValueError for an allowed network that is not a CIDR."""
        self._allowed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed)

    def refusal(self, address: Address) -> str:
        """Why webhooks may not go to `address` ("" when they may)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return ""
        if address.is_multicast or not address.is_global:
            return (f"{address} is not a public address (allow a network with `falrt server "
                    "--webhook-allow CIDR`)")
        return ""

    def check_url(self, url: str) -> None:
        """At Submit: raises InvalidArgumentError when the URL's host is an address that is
        refused (the message does not repeat the URL)."""
        address = literal_address(urlsplit(url).hostname or "")
        if address is not None and (why := self.refusal(address)):
            raise errors.InvalidArgumentError(f"webhook_url is refused: {why}")

    async def resolve(self, host: str, port: int) -> Address:
        """At delivery: the address to POST to. Raises ConnectionRefusedError (refused
        address) or OSError (no address)."""
        literal = literal_address(host)
        if literal is not None:
            found = [literal]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
            found = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not found:
            raise OSError(f"{host} has no address")
        for address in found:
            if why := self.refusal(address):
                raise ConnectionRefusedError(why)
        return found[0]


def literal_address(host: str) -> Address | None:
    """The address `host` spells, in any form a resolver accepts (None for a name)."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(part and _numeric(part) for part in host.split(".")):
        return None
    try:  # the forms of inet_aton: 127.1, 0x7f.1, 2130706433, 0177.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _numeric(part: str) -> bool:
    lowered = part.lower()
    if lowered.startswith("0x"):
        return all(c in "0123456789abcdef" for c in lowered[2:])
    return lowered.isdigit()


__all__ = ["TargetPolicy", "literal_address"]
