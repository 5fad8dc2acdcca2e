"""
Content digests (``sha256:<hex>``) and torrent infohashes.

Only sha256 is accepted.  Hex is always 64 lowercase characters: uppercase
hex is rejected rather than normalised so that one blob has exactly one
name on disk, in URLs and in JSON.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from attrs import frozen

ALGORITHM: Final = "sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class InvalidDigest(ValueError):
    """A string that is not a valid ``sha256:<64 lowercase hex>`` digest."""


class DigestMismatch(ValueError):
    """Content whose sha256 is not the digest it was claimed to have."""


def _check_hex(value: str, original: str) -> str:
    if not _HEX64.match(value):
        raise InvalidDigest(
            f"invalid digest {original!r}: expected sha256:<64 lowercase hex characters>"
        )
    return value


@frozen(order=True)
class Digest:
    """The sha256 digest that names a blob."""

    hex: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.hex, str):
            raise InvalidDigest(f"invalid digest {self.hex!r}: not a string")
        _check_hex(self.hex, self.hex)

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse the canonical ``sha256:<hex>`` form (as origin, tracker, registry use)."""
        if not isinstance(value, str):
            raise InvalidDigest(f"invalid digest {value!r}: not a string")
        algorithm, sep, hex_part = value.partition(":")
        if not sep:
            raise InvalidDigest(f"invalid digest {value!r}: missing 'sha256:' prefix")
        if algorithm != ALGORITHM:
            raise InvalidDigest(f"invalid digest {value!r}: unsupported algorithm {algorithm!r}")
        return cls(_check_hex(hex_part, value))

    @classmethod
    def parse_lenient(cls, value: str) -> Digest:
        """Parse either ``sha256:<hex>`` or bare hex (the agent's blob API accepts both)."""
        if isinstance(value, str) and ":" not in value:
            return cls(_check_hex(value, value))
        return cls.parse(value)

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        """The digest of ``data`` (for small data; stream big blobs through hashlib)."""
        return cls(hashlib.sha256(data).hexdigest())

    @property
    def shard_id(self) -> str:
        """The first four hex characters: the key of the hash ring and the store's shards."""
        return self.hex[:4]

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"


@frozen(order=True)
class InfoHash:
    """Identity of a torrent: sha256 hex of the canonical metainfo JSON."""

    hex: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX64.match(self.hex):
            raise InvalidDigest(f"invalid infohash {self.hex!r}: expected 64 lowercase hex")

    @classmethod
    def parse(cls, value: str) -> InfoHash:
        """Parse the 64-character hex form."""
        return cls(value)

    @classmethod
    def from_bytes(cls, raw: bytes) -> InfoHash:
        """Build from the 32 raw bytes carried in the peer handshake."""
        if len(raw) != 32:
            raise InvalidDigest(f"invalid infohash: expected 32 bytes, got {len(raw)}")
        return cls(raw.hex())

    def to_bytes(self) -> bytes:
        """The 32 raw bytes."""
        return bytes.fromhex(self.hex)

    def __str__(self) -> str:
        return self.hex
