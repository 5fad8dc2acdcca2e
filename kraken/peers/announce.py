"""
The announce exchange between an agent and a tracker (DESIGN 6), as validated values.

Request, ``POST /announce/{infohash}``::

    {"name": "<digest hex>", "digest": "sha256:<hex>", "infohash": "<hex>",
     "peer": {"peer_id": "<40 hex>", "ip": "10.0.0.1", "port": 16001,
              "origin": false, "complete": false}}

Response: ``{"peers": [<peer>, ...], "interval_seconds": 3}``.

A downloading agent may add ``"progress": {"pieces": N, "length": <bytes>, "have":
"<base64 bitfield>"}`` (the bitfield encoded as on the peer wire, docs/protocol.md): the
pieces it holds, which the tracker's swarm page shows (:mod:`kraken.peers.swarm`).  It
changes nothing in the answer.

Report, ``POST /report/{infohash}``: the announce fields (``peer`` is the
reporter) and ``"failed": ["<40 hex>", ...]``, the peers it could not reach
(:mod:`kraken.peers.quarantine`).

Unlike the Go tracker's, ids are hex strings and the interval is in seconds
(Go sent ``[20]byte`` arrays and nanoseconds).  Parsing never trusts the
network: every error is an :class:`InvalidAnnounce` whose message starts
with the offending field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final, TypeVar

from attrs import frozen

from kraken.core import Digest, InfoHash, InvalidDigest, InvalidPeerInfo, PeerID, PeerInfo


class InvalidAnnounce(ValueError):
    """An announce request or response that is malformed; the message names the field."""


#: Most pieces a progress report may describe (a 100 TB blob in 32 MiB pieces).
MAX_PROGRESS_PIECES: Final = 1 << 22

_H = TypeVar("_H", Digest, InfoHash)


@frozen
class AnnounceProgress:
    """The pieces a downloading agent holds: ``have`` is the bitfield's bytes."""

    pieces: int
    length: int
    have: bytes

    @property
    def count(self) -> int:
        """How many pieces are held."""
        return int.from_bytes(self.have, "big").bit_count()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object."""
        return {
            "pieces": self.pieces,
            "length": self.length,
            "have": base64.b64encode(self.have).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, obj: object) -> AnnounceProgress:
        """Validate ``progress``: counts in range, a bitfield of exactly ``pieces`` bits."""
        if not isinstance(obj, dict):
            raise InvalidAnnounce("progress: expected a JSON object")
        pieces, length, have = obj.get("pieces"), obj.get("length"), obj.get("have")
        if not isinstance(pieces, int) or isinstance(pieces, bool):
            raise InvalidAnnounce(f"progress.pieces: expected an integer, got {pieces!r}")
        if not 1 <= pieces <= MAX_PROGRESS_PIECES:
            raise InvalidAnnounce(f"progress.pieces: {pieces} not in 1..{MAX_PROGRESS_PIECES}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise InvalidAnnounce(f"progress.length: expected a size in bytes, got {length!r}")
        size = (pieces + 7) // 8
        if not isinstance(have, str) or len(have) > 4 * ((size + 2) // 3):
            raise InvalidAnnounce(f"progress.have: expected the base64 of {size} bytes")
        try:
            raw = base64.b64decode(have, validate=True)
        except binascii.Error:
            raise InvalidAnnounce("progress.have: not base64") from None
        if len(raw) != size:
            raise InvalidAnnounce(f"progress.have: {len(raw)} bytes for {pieces} pieces")
        if pieces % 8 and raw[-1] & (0xFF >> (pieces % 8)):
            raise InvalidAnnounce("progress.have: bits set past the last piece")
        return cls(pieces, length, raw)


def _hash_field(obj: dict[str, Any], key: str, parse: Callable[[str], _H]) -> _H:
    """``obj[key]``, a string, parsed by ``parse`` (a digest or an infohash)."""
    raw = obj[key]
    if not isinstance(raw, str):
        raise InvalidAnnounce(f"{key}: expected a string, got {raw!r}")
    try:
        return parse(raw)
    except InvalidDigest as e:
        raise InvalidAnnounce(f"{key}: {e}") from None


@frozen
class AnnounceRequest:
    """An agent's announce of one torrent."""

    digest: Digest
    infohash: InfoHash
    peer: PeerInfo
    progress: AnnounceProgress | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        body = {
            "name": self.digest.hex,
            "digest": str(self.digest),
            "infohash": self.infohash.hex,
            "peer": self.peer.to_dict(),
        }
        if self.progress is not None:
            body["progress"] = self.progress.to_dict()
        return body

    @classmethod
    def from_dict(cls, obj: object, infohash: InfoHash | None = None) -> AnnounceRequest:
        """
        Validate a request body; ``infohash`` is the one in the URL, which the body must match.
        """
        if not isinstance(obj, dict):
            raise InvalidAnnounce("body: expected a JSON object")
        for key in ("digest", "infohash", "peer"):
            if key not in obj:
                raise InvalidAnnounce(f"{key}: missing")
        digest = _hash_field(obj, "digest", Digest.parse)
        name = obj.get("name", digest.hex)
        if name != digest.hex:
            raise InvalidAnnounce(f"name: {name!r} is not the hex of digest {digest}")
        ih = _hash_field(obj, "infohash", InfoHash.parse)
        if infohash is not None and ih != infohash:
            raise InvalidAnnounce(f"infohash: {ih} in the body is not {infohash} of the URL")
        try:
            peer = PeerInfo.from_dict(obj["peer"])
        except InvalidPeerInfo as e:
            raise InvalidAnnounce(f"peer.{e}") from None
        raw_progress = obj.get("progress")
        progress = None if raw_progress is None else AnnounceProgress.from_dict(raw_progress)
        return cls(digest, ih, peer, progress)


#: Most peers one report may name (an announce answer holds about 50 agents).
MAX_REPORTED: Final = 64


@frozen
class ReportRequest:
    """An agent's report of peers of one torrent it could not reach (``POST /report/{ih}``)."""

    digest: Digest
    infohash: InfoHash
    peer: PeerInfo
    failed: tuple[PeerID, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "digest": str(self.digest),
            "infohash": self.infohash.hex,
            "peer": self.peer.to_dict(),
            "failed": [p.hex for p in self.failed],
        }

    @classmethod
    def from_dict(cls, obj: object, infohash: InfoHash | None = None) -> ReportRequest:
        """Validate a request body; ``infohash`` (the URL's) must match the body's."""
        announce = AnnounceRequest.from_dict(obj, infohash)
        assert isinstance(obj, dict)  # checked by AnnounceRequest.from_dict
        failed = obj.get("failed")
        if not isinstance(failed, list) or not 1 <= len(failed) <= MAX_REPORTED:
            raise InvalidAnnounce(f"failed: expected a list of 1..{MAX_REPORTED} peer ids")
        ids = []
        for i, raw in enumerate(failed):
            try:
                ids.append(PeerID(raw))
            except InvalidPeerInfo as e:
                raise InvalidAnnounce(f"failed[{i}]: {e}") from None
        return cls(announce.digest, announce.infohash, announce.peer, tuple(ids))


@frozen
class AnnounceResponse:
    """The tracker's answer: peers best first, and when to announce again."""

    peers: tuple[PeerInfo, ...]
    interval_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "peers": [p.to_dict() for p in self.peers],
            "interval_seconds": self.interval_seconds,
        }

    @classmethod
    def from_dict(cls, obj: object) -> AnnounceResponse:
        """Validate a response body (what the agent's client does with a tracker's answer)."""
        if not isinstance(obj, dict):
            raise InvalidAnnounce("body: expected a JSON object")
        peers = obj.get("peers")
        if peers is None:
            peers = []
        if not isinstance(peers, list):
            raise InvalidAnnounce(f"peers: expected a list, got {peers!r}")
        parsed = []
        for i, p in enumerate(peers):
            try:
                parsed.append(PeerInfo.from_dict(p))
            except InvalidPeerInfo as e:
                raise InvalidAnnounce(f"peers[{i}].{e}") from None
        interval = obj.get("interval_seconds")
        if (
            not isinstance(interval, int | float)
            or isinstance(interval, bool)
            or not 0 < interval <= 3600
        ):
            raise InvalidAnnounce(
                f"interval_seconds: expected 0 < seconds <= 3600, got {interval!r}"
            )
        return cls(tuple(parsed), float(interval))
