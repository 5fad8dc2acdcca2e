"""
Peer identities and the peer records exchanged with the tracker.

A peer id is 20 bytes written as 40 lowercase hex characters: random for
agents, sha1 of ``ip:port`` for origins so that it stays stable across
restarts (trackers advertise origins by it).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from typing import Any

from attrs import frozen

_HEX40 = re.compile(r"[0-9a-f]{40}\Z")


class InvalidPeerInfo(ValueError):
    """A peer id or peer record that is malformed; the message names the field."""


@frozen(order=True)
class PeerID:
    """20-byte peer identity, hex encoded."""

    hex: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX40.match(self.hex):
            raise InvalidPeerInfo(
                f"peer_id: expected 40 lowercase hex characters, got {self.hex!r}"
            )

    @classmethod
    def random(cls) -> PeerID:
        """A fresh random id (agents)."""
        return cls(os.urandom(20).hex())

    @classmethod
    def from_address(cls, ip: str, port: int) -> PeerID:
        """The stable id of the peer listening on ``ip:port`` (origins)."""
        return cls(hashlib.sha1(f"{ip}:{port}".encode(), usedforsecurity=False).hexdigest())

    @classmethod
    def from_bytes(cls, raw: bytes) -> PeerID:
        """From the 20 raw bytes of the peer handshake."""
        if len(raw) != 20:
            raise InvalidPeerInfo(f"peer_id: expected 20 bytes, got {len(raw)}")
        return cls(raw.hex())

    def to_bytes(self) -> bytes:
        """The 20 raw bytes."""
        return bytes.fromhex(self.hex)

    def __str__(self) -> str:
        return self.hex


def _field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    if name not in obj:
        raise InvalidPeerInfo(f"{name}: missing")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidPeerInfo(f"{name}: expected {what}, got {value!r}")
    return value


@frozen
class PeerInfo:
    """Where a peer listens and what it has of one blob."""

    peer_id: PeerID
    ip: str
    port: int
    origin: bool = False
    complete: bool = False

    def __attrs_post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.ip)
        except ValueError:
            raise InvalidPeerInfo(f"ip: {self.ip!r} is not an IP address") from None
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise InvalidPeerInfo(f"port: expected an integer, got {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise InvalidPeerInfo(f"port: {self.port} is out of range 1..65535")

    @property
    def address(self) -> str:
        """``ip:port`` (IPv6 in brackets)."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object used by the tracker API."""
        return {
            "peer_id": self.peer_id.hex,
            "ip": self.ip,
            "port": self.port,
            "origin": self.origin,
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, obj: object) -> PeerInfo:
        """Validate a JSON object from the network; errors name the field."""
        if not isinstance(obj, dict):
            raise InvalidPeerInfo("peer: expected a JSON object")
        peer_id = PeerID(_field(obj, "peer_id", str, "a string"))
        ip = _field(obj, "ip", str, "a string")
        port = _field(obj, "port", int, "an integer")
        origin = obj.get("origin", False)
        complete = obj.get("complete", False)
        if not isinstance(origin, bool):
            raise InvalidPeerInfo(f"origin: expected a boolean, got {origin!r}")
        if not isinstance(complete, bool):
            raise InvalidPeerInfo(f"complete: expected a boolean, got {complete!r}")
        return cls(peer_id, ip, port, origin, complete)
