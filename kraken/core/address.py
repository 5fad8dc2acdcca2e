"""
IP addresses as the tracker and the build-index judge them: parsing, networks, impossible peers.

Pure functions over :mod:`ipaddress`.  An IPv4 address written as IPv4-mapped
IPv6 (``::ffff:10.0.0.1``, what a dual-stack listener reports) is the IPv4
address, and an IPv6 zone (``fe80::1%eth0``) is dropped, so that one host has
one spelling whichever way it arrives.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The loopback networks (the host itself).
LOOPBACK_NETWORKS: Final = ("127.0.0.0/8", "::1/128")


def parse_ip(text: str) -> IPAddress:
    """``text`` as an address (IPv4-mapped IPv6 as IPv4, zone dropped); ValueError if not one."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``ip_network`` of each CIDR (host bits allowed); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` is in one of ``networks``."""
    return any(address in network for network in networks)


def impossible_peer_reason(address: IPAddress) -> str | None:
    """
    Why no peer can listen at ``address`` for others to dial, or None if one can.

    Unspecified (``0.0.0.0``, ``::``), multicast, link-local (``169.254.0.0/16``,
    ``fe80::/10``: the cloud metadata service lives there, and a link-local
    address means nothing off its link) and reserved addresses (``240.0.0.0/4``,
    the broadcast address) are impossible.  Loopback is judged by the caller,
    which knows where the announce came from.
    """
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_reserved:
        return "reserved"
    return None
