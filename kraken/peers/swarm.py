"""
What the tracker shows of each swarm: who takes part, how far each peer is, how fast.

:class:`SwarmView` is fed by announces (:meth:`SwarmView.record`, on the announce path, so
it does a few dictionary operations and nothing else): each agent's completion flag and,
while it downloads, the bitfield of its ``progress`` (:class:`~kraken.peers.announce.
AnnounceProgress`).  Rates are derived here, from the change in pieces held between two
announces of the same peer, and the swarm's total rate is sampled at most once a second
per torrent.  :meth:`SwarmView.snapshot` builds the swarm page's JSON when someone looks:
peers with their completion and rate, the blob's pieces as counts of holders (the
heatmap), and the total rate over time.  Memory is bounded: the most recently announced
:data:`MAX_TORRENTS` torrents, :data:`MAX_PEERS` peers each, peers gone after
:data:`PEER_TIMEOUT` seconds without an announce.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any, Final

from attrs import define, field

from kraken.core import Digest, InfoHash, PeerID, PeerInfo
from kraken.peers.announce import AnnounceRequest

__all__ = ["MAX_PEERS", "MAX_TORRENTS", "PEER_TIMEOUT", "SwarmView"]

MAX_TORRENTS: Final = 64
"""Torrents kept, the most recently announced."""

MAX_PEERS: Final = 2000
"""Agents kept per torrent (more are counted but not shown one by one)."""

PEER_TIMEOUT: Final = 90.0
"""Seconds without an announce after which a peer leaves the page (3 complete intervals)."""

HISTORY: Final = 600
"""Samples of a torrent's total rate kept (one a second at most: ten minutes)."""

HEAT_CELLS: Final = 1024
"""Most cells of the piece heatmap; a blob with more pieces has several per cell."""

HEAT_SAMPLE: Final = 256
"""Downloading agents whose bitfields the heatmap counts (more are sampled and scaled)."""


RATE_WINDOW: Final = 2.0
"""Seconds at least between the two counts a peer's rate is taken from (announces can come
close together, e.g. when a download starts, and a rate over 0.1 s says nothing)."""


@define
class _Peer:
    address: str
    complete: bool
    seen: float
    #: Pieces held (the last announce's count).
    done: int = 0
    have: bytes | None = None
    rate: float = 0.0
    #: The count and time the rate is measured from.
    counted: int = 0
    counted_at: float = 0.0


@define
class _Torrent:
    digest: Digest
    pieces: int = 0
    length: int = 0
    peers: dict[PeerID, _Peer] = field(factory=dict)
    #: (time, bytes per second of the whole swarm)
    history: deque[tuple[float, float]] = field(factory=lambda: deque(maxlen=HISTORY))
    sampled: float = 0.0
    updated: float = 0.0


@define
class SwarmView:
    """The tracker's picture of recent swarms (see the module doc)."""

    _torrents: OrderedDict[InfoHash, _Torrent] = field(factory=OrderedDict, init=False)
    #: The last snapshot of each torrent and when: viewers within a second share it.
    _shown: dict[InfoHash, tuple[float, dict[str, Any]]] = field(factory=dict, init=False)

    def record(self, req: AnnounceRequest, now: float) -> None:
        """Note one announce (cheap: on the announce path)."""
        h = req.infohash
        torrent = self._torrents.get(h)
        if torrent is None:
            torrent = self._torrents[h] = _Torrent(req.digest)
            if len(self._torrents) > MAX_TORRENTS:
                self._torrents.popitem(last=False)
        else:
            self._torrents.move_to_end(h)
        torrent.updated = now
        me = req.peer
        peer = torrent.peers.get(me.peer_id)
        if peer is None:
            if len(torrent.peers) >= MAX_PEERS:
                return
            peer = torrent.peers[me.peer_id] = _Peer(f"{me.ip}:{me.port}", me.complete, now)
        peer.seen = now
        peer.complete = me.complete
        progress = req.progress
        if progress is not None:
            torrent.pieces, torrent.length = progress.pieces, progress.length
            done = progress.count
            if peer.have is None:
                peer.counted, peer.counted_at = done, now
            elif now - peer.counted_at >= RATE_WINDOW:
                piece_bytes = torrent.length / torrent.pieces
                peer.rate = max(0.0, (done - peer.counted) * piece_bytes / (now - peer.counted_at))
                peer.counted, peer.counted_at = done, now
            peer.done, peer.have = done, progress.have
        elif me.complete:
            peer.have, peer.rate = None, 0.0
            if torrent.pieces:
                peer.done = torrent.pieces
        if now - torrent.sampled >= 1.0:
            torrent.sampled = now
            torrent.history.append((now, sum(p.rate for p in torrent.peers.values())))

    def digest_of(self, h: InfoHash) -> Digest | None:
        """The digest of recent torrent ``h``, or None."""
        torrent = self._torrents.get(h)
        return None if torrent is None else torrent.digest

    def torrents(self, now: float) -> list[dict[str, Any]]:
        """The recent torrents, newest first: infohash, digest, agents and how many complete."""
        listed = []
        for h, torrent in reversed(self._torrents.items()):
            peers = self._live(torrent, now)
            listed.append(
                {
                    "infohash": h.hex,
                    "digest": str(torrent.digest),
                    "length": torrent.length or None,
                    "agents": len(peers),
                    "complete": sum(1 for p in peers.values() if p.complete),
                    "updated": torrent.updated,
                }
            )
        return listed

    def snapshot(
        self, h: InfoHash, origins: Iterable[PeerInfo], now: float
    ) -> dict[str, Any] | None:
        """The swarm page's JSON for torrent ``h`` (None if unknown); ``origins`` hold it all."""
        torrent = self._torrents.get(h)
        if torrent is None:
            self._shown.pop(h, None)
            return None
        shown = self._shown.get(h)
        if shown is not None and 0 <= now - shown[0] < 1.0:
            return shown[1]
        view = self._snapshot(h, torrent, list(origins), now)
        if len(self._shown) >= MAX_TORRENTS:
            self._shown.clear()
        self._shown[h] = (now, view)
        return view

    def _snapshot(
        self, h: InfoHash, torrent: _Torrent, origin_list: list[PeerInfo], now: float
    ) -> dict[str, Any]:
        pieces = torrent.pieces
        peers = self._live(torrent, now)
        holders: list[bytes | None] = [
            None if peer.complete else peer.have
            for peer in peers.values()
            if peer.complete or peer.have is not None
        ]
        heat = _heat(pieces, holders, len(origin_list)) if pieces else []
        peer_rows = [
            {
                "peer_id": pid.hex,
                "address": p.address,
                "origin": False,
                "complete": p.complete,
                "done": pieces if p.complete and pieces else p.done,
                "rate": round(p.rate),
                "seen": round(now - p.seen, 1),
            }
            for pid, p in sorted(peers.items(), key=lambda item: item[1].address)
        ]
        origin_rows = [
            {
                "peer_id": o.peer_id.hex,
                "address": f"{o.ip}:{o.port}",
                "origin": True,
                "complete": True,
                "done": pieces,
                "rate": None,
                "seen": None,
            }
            for o in origin_list
        ]
        return {
            "infohash": h.hex,
            "digest": str(torrent.digest),
            "pieces": pieces or None,
            "length": torrent.length or None,
            "peers": origin_rows + peer_rows,
            "agents": len(peer_rows),
            "complete": sum(1 for p in peer_rows if p["complete"]),
            "heat": heat,
            "heat_max": len(peer_rows) + len(origin_rows),
            "rate": sum(p.rate for p in peers.values()),
            # The samples, then the rate now (0 once every peer is complete).
            "history": [[round(t - now, 1), round(r)] for t, r in torrent.history]
            + [[0.0, round(sum(p.rate for p in peers.values()))]],
        }

    def _live(self, torrent: _Torrent, now: float) -> dict[PeerID, _Peer]:
        """The torrent's peers that announced within :data:`PEER_TIMEOUT`; drops the others."""
        gone = [pid for pid, p in torrent.peers.items() if now - p.seen > PEER_TIMEOUT]
        for pid in gone:
            del torrent.peers[pid]
        return torrent.peers


def _heat(pieces: int, holders: list[bytes | None], extra: int) -> list[float]:
    """Holders per piece (``extra`` and complete holders, None, hold every piece).

    Up to :data:`HEAT_CELLS` pieces, one cell per piece; beyond, each cell spans whole
    bytes of the bitfield (8 k pieces) and holds the mean count of its pieces.  The work
    is one popcount per holder and cell (of at most :data:`HEAT_SAMPLE` downloading
    holders, evenly picked and scaled up), so a page view of a large swarm stays cheap.
    """
    full = extra + sum(1 for have in holders if have is None)
    partial = [have for have in holders if have is not None]
    scale = 1.0
    if len(partial) > HEAT_SAMPLE:
        scale = len(partial) / HEAT_SAMPLE
        step = len(partial) / HEAT_SAMPLE
        partial = [partial[int(i * step)] for i in range(HEAT_SAMPLE)]
    size = (pieces + 7) // 8
    if pieces <= HEAT_CELLS:
        bounds = [(i, i + 1) for i in range(pieces)]
    else:
        per_cell = -(-size // HEAT_CELLS)  # bytes
        bounds = [(8 * b, min(pieces, 8 * (b + per_cell))) for b in range(0, size, per_cell)]
    heat = []
    for first, end in bounds:
        held = 0
        if first % 8 == 0 and end - first >= 8:
            lo, hi = first // 8, (end + 7) // 8
            for have in partial:
                held += int.from_bytes(have[lo:hi], "big").bit_count()
        else:
            byte, mask = first // 8, 0x80 >> (first % 8)
            for have in partial:
                held += bool(have[byte] & mask)
        heat.append(round(full + scale * held / (end - first), 2))
    return heat
