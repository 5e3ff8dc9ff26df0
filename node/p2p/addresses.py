"""The addresses a node tells others to dial.

A node listening on ``/ip4/0.0.0.0/tcp/4001`` accepts connections on every interface,
but ``0.0.0.0`` is not an address anyone can dial: it is expanded here into this
machine's concrete IPv4 interface addresses (routable ones first, loopback last, so a
peer on the same machine can still use it). Addresses given in ``announce_addrs``
(public or NAT-mapped ones that no local interface carries) replace the expansion.
Every address ends in ``/p2p/<peer id>`` so it is a complete bootstrap entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import ifaddr
import multiaddr

__all__ = ["dialable_addrs", "interface_ipv4_addresses"]

WILDCARD_V4 = "0.0.0.0"


def interface_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses: routable ones first, loopback last, no duplicates."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    return sorted(found, key=lambda a: (ipaddress.IPv4Address(a).is_loopback, ipaddress.IPv4Address(a).is_link_local))


def _with_peer_id(addr: str, peer_id: str) -> str:
    return addr if "/p2p/" in addr else f"{addr.rstrip('/')}/p2p/{peer_id}"


def dialable_addrs(
    bound: Iterable[str],
    *,
    peer_id: str,
    announce: Sequence[str] = (),
    interfaces: Sequence[str] | None = None,
) -> list[str]:
    """What peers should dial: ``announce`` when given, else ``bound`` (the host's actual
    listen addresses, real ports) with the IPv4 wildcard expanded into ``interfaces``."""
    if announce:
        return [_with_peer_id(a, peer_id) for a in announce]
    local = list(interfaces) if interfaces is not None else interface_ipv4_addresses()
    out: list[str] = []
    for addr in bound:
        ma = multiaddr.Multiaddr(addr)
        try:
            host = ma.value_for_protocol("ip4")
        except Exception:  # noqa: BLE001 - not an ip4 address: kept as it is
            host = None
        if host == WILDCARD_V4:
            expanded = [addr.replace(f"/ip4/{WILDCARD_V4}/", f"/ip4/{ip}/", 1) for ip in local]
        else:
            expanded = [addr]
        for a in expanded:
            full = _with_peer_id(a, peer_id)
            if full not in out:
                out.append(full)
    return out
