"""
Peer stores: per torrent, the peers that announced it recently.

Semantics every :class:`IPeerStore` shares (checked by one abstract test suite):

- an announce creates or overwrites the peer's entry, keyed by peer id, and
  sets its expiry to ``now + ttl`` (default 5 h, DESIGN 6);
- the complete flag, once set for a live entry, stays set on later announces;
- expired entries are never returned;
- with ``max_per_address`` N > 0, one address (the entries' ``ip``) holds at
  most N entries per torrent: an announce of a new peer id from an address
  that has N drops the one of them announced least recently, so a host that
  restarts its agent (a new random id) is never locked out, and a host that
  announces many fake ids only ever has N of them handed out (issue 18).
  Loopback addresses are not bounded: they are the tracker's own host, where
  the herd and single-host tests run every agent;
- :meth:`IPeerStore.get_peers` returns up to ``limit`` distinct peers chosen at
  random; every one has ``origin=False`` (origins come from the origin ring,
  never from the store);
- :meth:`IPeerStore.announce` is the tracker's hot path: an update and a read
  in one operation (one Redis round trip), answering :class:`StoredPeer`
  records whose JSON is serialised once per entry, not once per answer.
"""

from __future__ import annotations

import functools
import json
import math
import random
from typing import Final

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from kraken.core import InfoHash, PeerInfo
from kraken.core.address import parse_ip

#: DESIGN 6: an entry lives this long after the peer's last announce.
DEFAULT_PEER_TTL: Final = 5 * 3600.0


@functools.lru_cache(maxsize=65536)
def is_bounded(ip: str) -> bool:
    """Whether entries at ``ip`` count against ``max_per_address`` (every address but loopback)."""
    try:
        return not parse_ip(ip).is_loopback
    except ValueError:
        return True


@frozen
class StoredPeer:
    """
    A peer as an announce answer hands it out: its id, flags and JSON object, serialised once.

    ``json`` is exactly ``json.dumps(peer.to_dict())`` of the :class:`PeerInfo`
    (compact separators), so an answer is a join of these fragments.  Stores
    build them from validated :class:`PeerInfo` values only.
    """

    peer_id: str
    origin: bool
    complete: bool
    json: bytes

    @classmethod
    def of(cls, peer: PeerInfo) -> StoredPeer:
        """The record of ``peer``."""
        return cls(
            peer.peer_id.hex,
            peer.origin,
            peer.complete,
            json.dumps(peer.to_dict(), separators=(",", ":")).encode("ascii"),
        )

    def peer_info(self) -> PeerInfo:
        """The :class:`PeerInfo` this record was made from."""
        return PeerInfo.from_dict(json.loads(self.json))


class IPeerStore(Interface):
    """Who announced which torrent (see the module docstring for the shared semantics)."""

    def update_peer(infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce of ``peer`` for ``infohash``; fires when stored."""

    def get_peers(infohash: InfoHash, limit: int) -> Deferred[list[PeerInfo]]:
        """Up to ``limit`` random live peers of ``infohash`` (fewer if there are fewer)."""

    def announce(infohash: InfoHash, peer: PeerInfo, limit: int) -> Deferred[list[StoredPeer]]:
        """
        :meth:`update_peer` then up to ``limit`` random live peers other than ``peer``, at once.

        Fires with the records of the chosen peers (in random order, ``origin``
        false), after ``peer`` has been stored.
        """


@define
class _Entry:
    peer: PeerInfo
    stored: StoredPeer
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
    max_per_address: int = 0
    _torrents: dict[InfoHash, dict[str, _Entry]] = field(init=False, factory=dict)
    #: With ``max_per_address``: per torrent, address -> ids of the entries at it.
    _by_ip: dict[InfoHash, dict[str, set[str]]] = field(init=False, factory=dict)

    def _record(self, infohash: InfoHash, peer: PeerInfo, now: float) -> dict[str, _Entry]:
        peers = self._torrents.get(infohash)
        if peers is None:
            peers = self._torrents[infohash] = {}
        key = peer.peer_id.hex
        old = peers.get(key)
        complete = peer.complete or (old is not None and old.expires_at > now and old.peer.complete)
        if (
            old is not None
            and old.peer.complete == complete
            and old.peer.port == peer.port
            and old.peer.ip == peer.ip
        ):
            # The common re-announce: same address and state, only the expiry moves.
            old.expires_at = now + self.ttl
        else:
            if self.max_per_address and (old is None or old.peer.ip != peer.ip):
                self._bound(infohash, peers, key, peer.ip, old)
            stored = PeerInfo(peer.peer_id, peer.ip, peer.port, origin=False, complete=complete)
            peers[key] = _Entry(stored, StoredPeer.of(stored), now + self.ttl)
        return peers

    def _bound(
        self, infohash: InfoHash, peers: dict[str, _Entry], key: str, ip: str, old: _Entry | None
    ) -> None:
        """Index ``key`` under ``ip``, first dropping the entries over the bound of ``ip``."""
        index = self._by_ip.get(infohash)
        if index is None:
            index = self._by_ip[infohash] = {}
        if old is not None:
            self._unindex(index, key, old.peer.ip)
        if not is_bounded(ip):
            return
        ids = index.get(ip)
        if ids is None:
            ids = index[ip] = set()
        while len(ids) >= self.max_per_address:
            oldest = min(ids, key=lambda i: peers[i].expires_at if i in peers else -math.inf)
            ids.discard(oldest)
            entry = peers.get(oldest)
            if entry is not None and entry.peer.ip == ip:
                del peers[oldest]
        ids.add(key)

    @staticmethod
    def _unindex(index: dict[str, set[str]], key: str, ip: str) -> None:
        ids = index.get(ip)
        if ids is not None:
            ids.discard(key)
            if not ids:
                del index[ip]

    def update_peer(self, infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce (see :meth:`IPeerStore.update_peer`)."""
        self._record(infohash, peer, self.clock.seconds())
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

    def announce(
        self, infohash: InfoHash, peer: PeerInfo, limit: int
    ) -> Deferred[list[StoredPeer]]:
        """Record and answer in one step (see :meth:`IPeerStore.announce`)."""
        now = self.clock.seconds()
        peers = self._record(infohash, peer, now)
        if limit <= 0:
            return succeed([])
        me = peers[peer.peer_id.hex]
        entries = list(peers.values())
        if len(entries) > limit + 1:
            # Sample first, check expiry after: expired entries are rare (the sweeper drops them).
            chosen = self.rng.sample(entries, limit + 1)
            out = [e.stored for e in chosen if e.expires_at > now and e is not me]
            if len(out) < limit:
                live = [e.stored for e in entries if e.expires_at > now and e is not me]
                out = self.rng.sample(live, min(limit, len(live)))
            return succeed(out[:limit])
        self.rng.shuffle(entries)
        return succeed([e.stored for e in entries if e.expires_at > now and e is not me])

    def sweep(self) -> int:
        """Drop expired entries and empty torrents; return how many entries were dropped."""
        now = self.clock.seconds()
        dropped = 0
        for infohash in list(self._torrents):
            peers = self._torrents[infohash]
            index = self._by_ip.get(infohash)
            for peer_id in [p for p, e in peers.items() if e.expires_at <= now]:
                entry = peers.pop(peer_id)
                if index is not None:
                    self._unindex(index, peer_id, entry.peer.ip)
                dropped += 1
            if not peers:
                del self._torrents[infohash]
                self._by_ip.pop(infohash, None)
        return dropped

    def torrent_count(self) -> int:
        """How many torrents have entries (live or not yet swept)."""
        return len(self._torrents)
