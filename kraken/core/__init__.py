"""
Pure values shared by every component: digests, metainfo, peer ids, bitfields, JSON.

Nothing here does I/O except the explicit streaming builders in
:mod:`kraken.core.metainfo`, which read from a file object they are given.
"""

from kraken.core.bitfield import Bitfield, InvalidBitfield
from kraken.core.digest import Digest, DigestMismatch, InfoHash, InvalidDigest
from kraken.core.jsonvalue import InvalidJSON, parse_json
from kraken.core.metainfo import (
    DEFAULT_PIECE_LENGTHS,
    InvalidMetaInfo,
    MetaInfo,
    MetaInfoBuilder,
    PieceLengthTable,
)
from kraken.core.peer import InvalidPeerInfo, PeerID, PeerInfo

__all__ = [
    "DEFAULT_PIECE_LENGTHS",
    "Bitfield",
    "Digest",
    "DigestMismatch",
    "InfoHash",
    "InvalidBitfield",
    "InvalidDigest",
    "InvalidJSON",
    "InvalidMetaInfo",
    "InvalidPeerInfo",
    "MetaInfo",
    "MetaInfoBuilder",
    "PeerID",
    "PeerInfo",
    "PieceLengthTable",
    "parse_json",
]
