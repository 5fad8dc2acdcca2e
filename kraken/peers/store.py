"""
Peer stores: per torrent, the peers that announced it recently.

Semantics every :class:`IPeerStore` shares (checked by one abstract test suite):

- an announce creates or overwrites the peer's entry, keyed by peer id, and
  sets its expiry to ``now + ttl`` (default 5 h, DESIGN 6);
- the complete flag, once set for a live entry, stays set on later announces;
- expired entries are never returned;
- :meth:`IPeerStore.get_peers` returns up to ``limit`` distinct peers chosen at
  random; every one has ``origin=False`` (origins come from the origin ring,
  never from the store).
"""

from __future__ import annotations

import random
from typing import Final

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from kraken.core import InfoHash, PeerID, PeerInfo

#: DESIGN 6: an entry lives this long after the peer's last announce.
DEFAULT_PEER_TTL: Final = 5 * 3600.0


class IPeerStore(Interface):
    """Who announced which torrent (see the module docstring for the shared semantics)."""

    def update_peer(infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce of ``peer`` for ``infohash``; fires when stored."""

    def get_peers(infohash: InfoHash, limit: int) -> Deferred[list[PeerInfo]]:
        """Up to ``limit`` random live peers of ``infohash`` (fewer if there are fewer)."""


@define
class _Entry:
    peer: PeerInfo
    expires_at: float


@implementer(IPeerStore)
@define
class MemoryPeerStore:
    """
    The default store: a dict per torrent in this process.

    Expired entries are skipped on read and dropped by :meth:`sweep`, which the
    tracker service calls periodically so that abandoned torrents free memory.
    """

    clock: IReactorTime
    ttl: float = DEFAULT_PEER_TTL
    rng: random.Random = field(factory=random.Random)
    _torrents: dict[InfoHash, dict[PeerID, _Entry]] = field(init=False, factory=dict)

    def update_peer(self, infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce (see :meth:`IPeerStore.update_peer`)."""
        now = self.clock.seconds()
        peers = self._torrents.setdefault(infohash, {})
        old = peers.get(peer.peer_id)
        complete = peer.complete or (old is not None and old.expires_at > now and old.peer.complete)
        stored = PeerInfo(peer.peer_id, peer.ip, peer.port, origin=False, complete=complete)
        peers[peer.peer_id] = _Entry(stored, now + self.ttl)
        return succeed(None)

    def get_peers(self, infohash: InfoHash, limit: int) -> Deferred[list[PeerInfo]]:
        """Random live peers (see :meth:`IPeerStore.get_peers`)."""
        now = self.clock.seconds()
        peers = self._torrents.get(infohash, {})
        live = [e.peer for e in peers.values() if e.expires_at > now]
        if limit <= 0:
            return succeed([])
        if len(live) > limit:
            live = self.rng.sample(live, limit)
        else:
            self.rng.shuffle(live)
        return succeed(live)

    def sweep(self) -> int:
        """Drop expired entries and empty torrents; return how many entries were dropped."""
        now = self.clock.seconds()
        dropped = 0
        for infohash in list(self._torrents):
            peers = self._torrents[infohash]
            for peer_id in [p for p, e in peers.items() if e.expires_at <= now]:
                del peers[peer_id]
                dropped += 1
            if not peers:
                del self._torrents[infohash]
        return dropped

    def torrent_count(self) -> int:
        """How many torrents have entries (live or not yet swept)."""
        return len(self._torrents)
