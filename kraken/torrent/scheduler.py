"""
The P2P scheduler: every torrent of a node, its connections and its announces.

Sans-IO: methods are events (a handshake arrived, a piece was written, the
timer ticked...) and return the :mod:`~kraken.torrent.actions` the driver
must perform.  Time comes from the injected ``now()``, randomness from an
injected ``random.Random``.  The driver calls :meth:`Scheduler.tick` about
once a second.

Admission (issue 18: no peer may hold capacity others need): an incoming
connection is refused when its source (the driver's key for the remote
address) already holds ``max_conns_per_address`` connections of the torrent.
A connection is *useful* once it has shown traffic worth its slot: we dialled
it (from the tracker's list), the tracker handed its peer id to us lately, it
offered pieces we lack (handshake, ANNOUNCE_PIECE, COMPLETE), it asked for a
piece we have, or it sent a payload we asked for.  A newcomer that finds the
torrent full takes the slot of the oldest incoming connection that has not been
useful (closed without blacklist), or is refused; a connection that has been
useful keeps its slot.  ``reserved_conns_per_torrent`` slots are taken only
by newcomers that are vouched for (handed out by the tracker, or offering
pieces we lack).  A handshake followed by nothing therefore holds a slot only
until the next peer needs it.

Connection policy (DESIGN 5): at most ``max_conns_per_torrent`` pending +
active connections per torrent, of which at most ``max_dials_per_torrent``
dialled by us (the rest wait for peers that dial us: a swarm that starts at
once otherwise splits into the first agents, full of each other, and the
rest); a failed dial, a bad handshake, a protocol
violation, a bad piece, an unexpected disconnect or an idle timeout
blacklists the peer for that torrent for ``blacklist_duration``
(cleared when the torrent completes); connections without progress either
way for ``conn_idle_timeout`` are closed, any connection after
``conn_lifetime``; two complete peers never stay connected.  When two peers
dial each other at once, the connection dialled by the smaller peer id wins.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence

from attrs import define, field

from kraken.core import Bitfield, InfoHash, MetaInfo, PeerID, PeerInfo
from kraken.torrent.actions import (
    Action,
    Announce,
    Close,
    Commit,
    ConnId,
    Dial,
    EngineConfig,
    Send,
    SendPiece,
    TorrentDropped,
)
from kraken.torrent.dispatch import PayloadVerdict, PieceDispatcher
from kraken.torrent.messages import (
    AnnouncePiece,
    CancelPiece,
    Complete,
    Error,
    ErrorCode,
    Handshake,
    Message,
    PiecePayload,
    PieceRequest,
)

#: Called once per waiter: None on success, else the reason the download failed.
Waiter = Callable[[BaseException | None], None]


class DownloadFailed(Exception):
    """A download could not finish (idle timeout, commit failure, shutdown)."""


class HandshakeRejected(Exception):
    """An incoming handshake the engine refuses; the driver closes the connection."""


class LocalStorageError(OSError):
    """
    A download ended because this node could not store a piece (disk full, I/O error).

    An ``OSError`` with the ``errno`` of the failed write (ENOSPC, EIO, ...), so
    that an API maps it like the error itself (e.g. 507 for ENOSPC); the peer
    that sent the piece is not at fault and is not blamed.
    """


@define
class TorrentControl:
    """Engine state of one torrent."""

    metainfo: MetaInfo
    namespace: str
    dispatcher: PieceDispatcher
    created: float
    last_read: float
    last_write: float
    #: "downloading", "committing" or "complete".
    state: str = "downloading"
    waiters: list[Waiter] = field(factory=list)
    #: peer ids the tracker handed us for this torrent -> when (last time).
    handed_out: dict[PeerID, float] = field(factory=dict)

    @property
    def complete(self) -> bool:
        """Whether the blob is final in the archive."""
        return self.state == "complete"


@define
class ConnRecord:
    """One connection, pending (dialling / handshaking) or active."""

    conn: ConnId
    infohash: InfoHash
    peer_id: PeerID
    outgoing: bool
    created: float
    active: bool = False
    origin: bool = False
    #: the driver's key for the remote address of an incoming connection.
    source: str | None = None
    #: whether it has shown traffic worth its slot (see the module doc); our dials are.
    useful: bool = False


class AnnounceQueue:
    """Round robin of torrents to announce; each entry has a not-before time."""

    def __init__(self) -> None:
        self._ready: OrderedDict[InfoHash, float] = OrderedDict()
        self._pending: set[InfoHash] = set()

    def add(self, h: InfoHash, at: float) -> None:
        """(Re)queue ``h`` at the back, to announce no earlier than ``at``."""
        self._pending.discard(h)
        self._ready.pop(h, None)
        self._ready[h] = at

    def take(self, h: InfoHash) -> None:
        """Mark ``h`` as being announced (out of band, e.g. at start)."""
        self._ready.pop(h, None)
        self._pending.add(h)

    def ready(self, h: InfoHash, at: float) -> None:
        """An announce finished: requeue ``h`` if it is still tracked."""
        if h in self._pending:
            self.add(h, at)

    def eject(self, h: InfoHash) -> None:
        """Stop announcing ``h``."""
        self._ready.pop(h, None)
        self._pending.discard(h)

    def __contains__(self, h: object) -> bool:
        return h in self._ready or h in self._pending

    def candidates(self, now: float) -> list[InfoHash]:
        """Queued torrents due now, in round-robin order."""
        return [h for h, at in self._ready.items() if at <= now]


@define
class _Dormant:
    """A complete torrent dropped for idleness that still announces (it is cached)."""

    metainfo: MetaInfo
    namespace: str


class Scheduler:
    """All torrents of one node (agent or origin)."""

    def __init__(
        self,
        peer_id: PeerID,
        now: Callable[[], float],
        rng: random.Random,
        config: EngineConfig | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.config = config or EngineConfig()
        self._now = now
        self._rng = rng
        self.torrents: dict[InfoHash, TorrentControl] = {}
        self.conns: dict[ConnId, ConnRecord] = {}
        self._by_peer: dict[tuple[InfoHash, PeerID], ConnId] = {}
        self.blacklist: dict[tuple[InfoHash, PeerID], float] = {}
        self.announces = AnnounceQueue()
        self._dormant: dict[InfoHash, _Dormant] = {}
        self.announce_interval = self.config.announce_interval
        self._next_announce = now()
        self._next_conn = 0

    # -- helpers -------------------------------------------------------------------

    def _new_conn(self) -> ConnId:
        self._next_conn += 1
        return ConnId(self._next_conn)

    def is_blacklisted(self, h: InfoHash, peer_id: PeerID) -> bool:
        """Whether ``peer_id`` may not be connected for torrent ``h`` now."""
        until = self.blacklist.get((h, peer_id))
        if until is None:
            return False
        if until <= self._now():
            del self.blacklist[(h, peer_id)]
            return False
        return True

    def _count(self, h: InfoHash) -> int:
        return sum(1 for r in self.conns.values() if r.infohash == h)

    def _dial_count(self, h: InfoHash) -> int:
        return sum(1 for r in self.conns.values() if r.infohash == h and r.outgoing)

    def _drop_conn(self, conn: ConnId, blacklist: bool) -> list[Action]:
        rec = self.conns.pop(conn, None)
        if rec is None:
            return []
        key = (rec.infohash, rec.peer_id)
        if self._by_peer.get(key) == conn:
            del self._by_peer[key]
        if blacklist:
            self.blacklist[key] = self._now() + self.config.blacklist_duration
        torrent = self.torrents.get(rec.infohash)
        if torrent is None or not rec.active:
            return []
        return torrent.dispatcher.remove_peer(conn)

    def _settle(self, actions: Iterable[Action]) -> list[Action]:
        """Apply Close actions to our state (which may yield more actions) and drop
        sends to connections closed meanwhile."""
        out: list[Action] = []
        queue = deque(actions)
        while queue:
            a = queue.popleft()
            if isinstance(a, Close):
                if a.conn not in self.conns:
                    continue
                more = self._drop_conn(a.conn, a.blacklisted)
                out.append(a)
                queue.extend(more)
            elif isinstance(a, Send | SendPiece) and a.conn not in self.conns:
                continue
            else:
                out.append(a)
        return self._check_completion(out)

    def _check_completion(self, actions: list[Action]) -> list[Action]:
        for h, t in self.torrents.items():
            if t.state == "downloading" and t.dispatcher.complete:
                t.state = "committing"
                actions.append(Commit(h))
        return actions

    # -- torrents ------------------------------------------------------------------

    def has_torrent(self, h: InfoHash) -> bool:
        """Whether the engine tracks ``h`` now (else the driver opens it from the archive)."""
        return h in self.torrents

    def add_torrent(
        self,
        metainfo: MetaInfo,
        namespace: str,
        have: Bitfield,
        *,
        complete: bool = False,
        waiter: Waiter | None = None,
    ) -> list[Action]:
        """
        Track a torrent (a download request, or a seeder reopened for an incoming peer).

        ``have`` is the archive's bitfield; ``complete`` whether the archive holds the
        final blob.  Concurrent requests share one torrent: a second call only adds its
        waiter (called at once if already complete).
        """
        h = metainfo.infohash
        now = self._now()
        torrent = self.torrents.get(h)
        actions: list[Action] = []
        if torrent is None:
            dispatcher = PieceDispatcher(
                h, metainfo, have, self.config, rng=self._rng, now=self._now
            )
            torrent = TorrentControl(metainfo, namespace, dispatcher, now, now, now)
            if complete:
                torrent.state = "complete"
            self.torrents[h] = torrent
            self._dormant.pop(h, None)
            if self.config.announce:
                if torrent.complete or dispatcher.complete:
                    if h not in self.announces:
                        self.announces.add(h, now)
                else:
                    self.announces.take(h)
                    actions.append(Announce(h, metainfo.digest, namespace, False))
        if waiter is not None:
            if torrent.complete:
                waiter(None)
            else:
                torrent.waiters.append(waiter)
        return self._settle(actions)

    def handshake_for(self, h: InfoHash) -> Handshake:
        """Our handshake for torrent ``h``."""
        t = self.torrents[h]
        return Handshake(
            self.peer_id,
            h,
            t.metainfo.digest,
            t.namespace,
            t.dispatcher.have,
            origin=self.config.origin,
        )

    def _fail_waiters(self, t: TorrentControl, reason: BaseException) -> None:
        waiters, t.waiters = t.waiters, []
        for w in waiters:
            w(reason)

    def _close_torrent_conns(self, h: InfoHash, reason: str) -> list[Action]:
        actions: list[Action] = [
            Close(rec.conn, reason) for rec in list(self.conns.values()) if rec.infohash == h
        ]
        for a in actions:
            assert isinstance(a, Close)
            rec = self.conns.pop(a.conn)
            self._by_peer.pop((rec.infohash, rec.peer_id), None)
        return actions

    def commit_done(self, h: InfoHash) -> list[Action]:
        """The blob is final in the archive: seed it, tell peers and the tracker."""
        t = self.torrents.get(h)
        if t is None or t.state != "committing":
            return []
        t.state = "complete"
        for key in [k for k in self.blacklist if k[0] == h]:
            del self.blacklist[key]
        actions: list[Action] = []
        for conn, peer in list(t.dispatcher.peers.items()):
            if peer.bitfield.complete():
                actions.append(Close(conn, "both sides complete"))
            else:
                actions.append(Send(conn, Complete()))
        if self.config.announce:
            self.announces.take(h)
            actions.append(Announce(h, t.metainfo.digest, t.namespace, True))
        waiters, t.waiters = t.waiters, []
        for w in waiters:
            w(None)
        return self._settle(actions)

    def commit_failed(self, h: InfoHash, reason: str) -> list[Action]:
        """The archive could not finalise the blob: fail the download."""
        t = self.torrents.pop(h, None)
        if t is None:
            return []
        self.announces.eject(h)
        actions = self._close_torrent_conns(h, "commit failed")
        self._fail_waiters(t, DownloadFailed(f"{t.metainfo.digest}: commit failed: {reason}"))
        return [*actions, TorrentDropped(h, False)]

    def storage_failed(self, h: InfoHash, index: int, error: OSError) -> list[Action]:
        """
        Writing piece ``index`` failed on our side (``error``: ENOSPC, EIO, ...): end the download.

        Every other piece would fail the same way, so nothing is retried and no
        peer is blamed: the connections close without a blacklist, waiters fail
        with :class:`LocalStorageError`, and the torrent is dropped (its storage
        keeps the verified pieces, so a later download resumes from them).
        """
        t = self.torrents.get(h)
        if t is None or t.state != "downloading":
            return []
        del self.torrents[h]
        self.announces.eject(h)
        actions = self._close_torrent_conns(h, "local storage failed")
        what = error.strerror or str(error)
        self._fail_waiters(
            t,
            LocalStorageError(
                error.errno, f"{t.metainfo.digest}: storing piece {index} failed: {what}"
            ),
        )
        return [*actions, TorrentDropped(h, False)]

    def forget(self, h: InfoHash) -> list[Action]:
        """Drop a torrent entirely (its blob was deleted); waiters fail."""
        self._dormant.pop(h, None)
        self.announces.eject(h)
        t = self.torrents.pop(h, None)
        if t is None:
            return []
        actions = self._close_torrent_conns(h, "torrent removed")
        self._fail_waiters(t, DownloadFailed(f"{t.metainfo.digest}: removed"))
        return actions

    def stop(self) -> list[Action]:
        """Close everything and fail every waiter."""
        actions: list[Action] = []
        for h in list(self.torrents):
            t = self.torrents.pop(h)
            actions.extend(self._close_torrent_conns(h, "shutting down"))
            self._fail_waiters(t, DownloadFailed(f"{t.metainfo.digest}: scheduler stopped"))
        for rec in list(self.conns.values()):
            actions.append(Close(rec.conn, "shutting down"))
        self.conns.clear()
        self._by_peer.clear()
        return actions

    # -- announces -----------------------------------------------------------------

    def announce_result(
        self, h: InfoHash, peers: Sequence[PeerInfo], interval: float | None = None
    ) -> list[Action]:
        """The tracker's answer: dial peers in its order until the torrent is full."""
        now = self._now()
        if interval is not None:
            if interval <= 0:
                interval = self.config.announce_interval
            self.announce_interval = min(interval, self.config.max_announce_interval)
        t = self.torrents.get(h)
        complete = (t is None and h in self._dormant) or (t is not None and t.complete)
        self.announces.ready(h, now + (self.config.complete_announce_interval if complete else 0.0))
        if t is None or t.state != "downloading":
            return []
        forget_before = now - self.config.handout_memory
        for pid in [p for p, when in t.handed_out.items() if when < forget_before]:
            del t.handed_out[pid]
        for peer in peers:
            t.handed_out[peer.peer_id] = now
        actions: list[Action] = t.dispatcher.learn_origins(p.peer_id for p in peers if p.origin)
        count = self._count(h)
        dials = self._dial_count(h)
        max_dials = self.config.max_dials_per_torrent
        for peer in peers:
            if count >= self.config.max_conns_per_torrent:
                break
            if max_dials is not None and dials >= max_dials:
                break
            if peer.peer_id == self.peer_id or (h, peer.peer_id) in self._by_peer:
                continue
            if self.is_blacklisted(h, peer.peer_id):
                continue
            conn = self._new_conn()
            self.conns[conn] = ConnRecord(
                conn, h, peer.peer_id, True, now, origin=peer.origin, useful=True
            )
            self._by_peer[(h, peer.peer_id)] = conn
            actions.append(Dial(conn, h, peer))
            count += 1
            dials += 1
        return actions

    def announce_failed(self, h: InfoHash) -> list[Action]:
        """The announce failed: try again on a later turn."""
        t = self.torrents.get(h)
        complete = t is None or t.complete
        self.announces.ready(
            h, self._now() + (self.config.complete_announce_interval if complete else 0.0)
        )
        return []

    def _announce_tick(self) -> list[Action]:
        now = self._now()
        if not self.config.announce or now < self._next_announce:
            return []
        # Plain round robin: complete torrents are requeued 30 s out, so they do not crowd
        # out downloads, and downloads cannot starve them.
        for h in self.announces.candidates(now):
            t = self.torrents.get(h)
            if t is not None:
                if t.state == "downloading" and self._active_count(h) >= (
                    self.config.max_conns_per_torrent
                ):
                    self.announces.add(h, now)  # saturated: skip this turn
                    continue
                meta, ns, complete = t.metainfo, t.namespace, t.complete
            elif h in self._dormant:
                meta, ns, complete = self._dormant[h].metainfo, self._dormant[h].namespace, True
            else:
                self.announces.eject(h)
                continue
            self.announces.take(h)
            self._next_announce = now + self.announce_interval
            return [Announce(h, meta.digest, ns, complete)]
        return []

    def _active_count(self, h: InfoHash) -> int:
        return sum(1 for r in self.conns.values() if r.infohash == h and r.active)

    # -- connections ---------------------------------------------------------------

    def dial_failed(self, conn: ConnId, reason: str = "dial failed") -> list[Action]:
        """A dial or its handshake failed: blacklist the peer."""
        return self._settle(self._drop_conn(conn, blacklist=True))

    def _check_remote(self, h: InfoHash, hs: Handshake) -> TorrentControl:
        t = self.torrents.get(h)
        if t is None:
            raise HandshakeRejected(f"unknown torrent {h}")
        if hs.infohash != h:
            raise HandshakeRejected(f"handshake for torrent {hs.infohash}, expected {h}")
        if hs.digest != t.metainfo.digest:
            raise HandshakeRejected(f"handshake names blob {hs.digest}, not {t.metainfo.digest}")
        if hs.bitfield.length != t.metainfo.num_pieces:
            raise HandshakeRejected(
                f"handshake has {hs.bitfield.length} pieces, expected {t.metainfo.num_pieces}"
            )
        if hs.peer_id == self.peer_id:
            raise HandshakeRejected("connection to ourselves")
        if hs.bitfield.complete() and t.complete:
            raise HandshakeRejected("both sides complete")
        return t

    def dial_succeeded(self, conn: ConnId, hs: Handshake) -> list[Action]:
        """The acceptor answered our handshake: activate the connection."""
        rec = self.conns.get(conn)
        if rec is None or rec.active:
            return []
        try:
            if hs.peer_id != rec.peer_id:
                raise HandshakeRejected(f"peer answered as {hs.peer_id}, expected {rec.peer_id}")
            t = self._check_remote(rec.infohash, hs)
        except HandshakeRejected as e:
            return self._settle([Close(conn, str(e), blacklisted=True)])
        rec.active = True
        rec.origin = rec.origin or hs.origin
        return self._settle(t.dispatcher.add_peer(conn, hs.peer_id, hs.bitfield, rec.origin))

    def accept(self, hs: Handshake, source: str | None = None) -> tuple[ConnId, list[Action]]:
        """
        An incoming handshake: the new connection's id and the actions to run after
        sending our handshake (``handshake_for``).  Raises HandshakeRejected.

        ``source`` is the driver's key for the remote address (None: unknown, no
        per-address limit); see the module doc for the admission rules.
        """
        h = hs.infohash
        t = self._check_remote(h, hs)
        if self.is_blacklisted(h, hs.peer_id):
            raise HandshakeRejected(f"peer {hs.peer_id} is blacklisted for {h}")
        superseding: ConnId | None = None
        existing = self._by_peer.get((h, hs.peer_id))
        if existing is not None:
            rec = self.conns[existing]
            if rec.active or not rec.outgoing or self.peer_id < hs.peer_id:
                raise HandshakeRejected(f"already connected to {hs.peer_id}")
            # Both dialled at once: the connection dialled by the smaller id wins.
            superseding = existing
        per_address = self.config.max_conns_per_address
        if source is not None and per_address is not None:
            held = sum(1 for r in self.conns.values() if r.infohash == h and r.source == source)
            if held >= per_address:
                raise HandshakeRejected(
                    f"address {source} already holds {held} connections to torrent {h}"
                )
        now = self._now()
        vouched = (
            hs.peer_id in t.handed_out
            and now - t.handed_out[hs.peer_id] <= self.config.handout_memory
        ) or hs.bitfield.has_any_not_in(t.dispatcher.have)
        capacity = self.config.max_conns_per_torrent
        if not vouched:
            capacity -= self.config.reserved_conns_per_torrent
        count = self._count(h) - (superseding is not None)
        evicted: ConnId | None = None
        if count >= capacity:
            # A vouched newcomer is worth more than any connection that has shown nothing.
            evicted = self._idle_incoming(h, 0.0 if vouched else self.config.useful_within)
            if evicted is None:
                raise HandshakeRejected(f"torrent {h} is at capacity")
        actions: list[Action] = []
        first: list[Action] = []
        if superseding is not None:
            actions.extend(self._drop_conn(superseding, blacklist=False))
            first.append(Close(superseding, "superseded by the peer's own dial"))
        if evicted is not None:
            actions.extend(self._drop_conn(evicted, blacklist=False))
            reason = "slot given to a new peer (this one sent nothing useful)"
            first.append(Send(evicted, Error(0, ErrorCode.SLOT_RECLAIMED, reason)))
            first.append(Close(evicted, reason))
        conn = self._new_conn()
        self.conns[conn] = ConnRecord(
            conn, h, hs.peer_id, False, now, True, hs.origin, source=source, useful=vouched
        )
        self._by_peer[(h, hs.peer_id)] = conn
        actions.extend(t.dispatcher.add_peer(conn, hs.peer_id, hs.bitfield, hs.origin))
        return conn, [*first, *self._settle(actions)]

    def _idle_incoming(self, h: InfoHash, grace: float) -> ConnId | None:
        """The oldest incoming connection of ``h`` not useful within ``grace`` seconds."""
        since = self._now() - grace
        idle = [
            r
            for r in self.conns.values()
            if r.infohash == h and not r.outgoing and not r.useful and r.created <= since
        ]
        return min(idle, key=lambda r: (r.created, r.conn)).conn if idle else None

    def conn_lost(self, conn: ConnId, reason: str = "connection lost") -> list[Action]:
        """The connection closed without us asking: blacklist the peer."""
        return self._settle(self._drop_conn(conn, blacklist=True))

    def protocol_error(self, conn: ConnId, reason: str) -> list[Action]:
        """The peer sent something malformed: close and blacklist."""
        return self._settle([Close(conn, reason, blacklisted=True)])

    def _dispatcher_of(self, conn: ConnId) -> PieceDispatcher | None:
        rec = self.conns.get(conn)
        if rec is None or not rec.active:
            return None
        t = self.torrents.get(rec.infohash)
        return None if t is None else t.dispatcher

    def message(self, conn: ConnId, msg: Message) -> list[Action]:
        """A control message arrived on an active connection."""
        d = self._dispatcher_of(conn)
        if d is None:
            return []
        rec = self.conns[conn]
        if isinstance(msg, Error) and msg.code == ErrorCode.SLOT_RECLAIMED:
            # The peer needed the slot for another: no fault, no blacklist.
            return self._settle([Close(conn, "the peer gave our slot to another")])
        if not rec.useful:
            rec.useful = _useful(msg, d)
        if isinstance(msg, PieceRequest):
            actions = d.on_request(conn, msg.index)
        elif isinstance(msg, AnnouncePiece):
            actions = d.on_announce(conn, msg.index)
        elif isinstance(msg, CancelPiece):
            actions = d.on_cancel(conn, msg.index)
        elif isinstance(msg, Error):
            actions = d.on_error(conn, msg.index, msg.code)
        elif isinstance(msg, Complete):
            actions = d.on_complete(conn)
        elif isinstance(msg, PiecePayload):
            raise TypeError("PIECE_PAYLOAD goes through payload_start")
        else:
            actions = [Close(conn, "second handshake", blacklisted=True)]
        return self._settle(actions)

    def payload_start(
        self, conn: ConnId, index: int, length: int
    ) -> tuple[PayloadVerdict, list[Action]]:
        """A PIECE_PAYLOAD header: a PayloadVerdict and actions."""
        d = self._dispatcher_of(conn)
        if d is None:
            return PayloadVerdict.DISCARD, []
        verdict, actions = d.payload_start(conn, index, length)
        if verdict != PayloadVerdict.REJECT:
            self.conns[conn].useful = True
        return verdict, self._settle(actions)

    def payload_end(self, conn: ConnId, index: int) -> tuple[PayloadVerdict, list[Action]]:
        """The bytes of a RECEIVEd payload are in: ACCEPT (verify + write) or DISCARD."""
        d = self._dispatcher_of(conn)
        if d is None:
            return PayloadVerdict.DISCARD, []
        verdict, actions = d.payload_end(conn, index)
        return verdict, self._settle(actions)

    def piece_written(self, conn: ConnId, h: InfoHash, index: int) -> list[Action]:
        """An accepted piece was verified and stored (the connection may be gone)."""
        t = self.torrents.get(h)
        if t is None:
            return []
        t.last_write = self._now()
        return self._settle(t.dispatcher.piece_written(conn, index))

    def piece_failed(
        self, conn: ConnId, h: InfoHash, index: int, *, bad_data: bool, reason: str
    ) -> list[Action]:
        """An accepted piece failed its hash (``bad_data``) or the write failed."""
        t = self.torrents.get(h)
        if t is None:
            return []
        return self._settle(t.dispatcher.piece_failed(conn, index, bad_data, reason))

    def piece_sent(self, conn: ConnId, index: int) -> list[Action]:
        """A piece was streamed to the peer (counts as a read for the seeder TTI)."""
        rec = self.conns.get(conn)
        d = self._dispatcher_of(conn)
        if rec is None or d is None:
            return []
        self.torrents[rec.infohash].last_read = self._now()
        return self._settle(d.piece_sent(conn, index))

    def send_failed(self, conn: ConnId, index: int, reason: str) -> list[Action]:
        """Reading a piece to serve failed."""
        d = self._dispatcher_of(conn)
        return [] if d is None else self._settle(d.send_failed(conn, index, reason))

    # -- time ----------------------------------------------------------------------

    def tick(self, progressed: Iterable[ConnId] = ()) -> list[Action]:
        """
        Timers: request timeouts, idle/old connections, idle torrents, announces.

        ``progressed`` are the connections on which piece payload bytes arrived since
        the last tick: their stall clocks restart (the request timeout measures a
        peer's progress, see :mod:`kraken.torrent.dispatch`).
        """
        now = self._now()
        actions: list[Action] = []
        for conn in progressed:
            d = self._dispatcher_of(conn)
            if d is not None:
                d.progress(conn)
        for key in [k for k, until in self.blacklist.items() if until <= now]:
            del self.blacklist[key]
        for t in self.torrents.values():
            actions.extend(t.dispatcher.expire())
        for rec in list(self.conns.values()):
            control = self.torrents.get(rec.infohash)
            if control is None:
                actions.append(Close(rec.conn, "torrent gone"))
                continue
            if not rec.active:
                continue
            peer = control.dispatcher.peers[rec.conn]
            progress = max(peer.last_progress, rec.created)
            if now - progress > self.config.conn_idle_timeout:
                actions.append(Close(rec.conn, "idle", blacklisted=True))
            elif now - rec.created > self.config.conn_lifetime:
                actions.append(Close(rec.conn, "lifetime over"))
            elif control.complete and peer.bitfield.complete():
                actions.append(Close(rec.conn, "both sides complete"))
        actions = self._settle(actions)
        for h, t in list(self.torrents.items()):
            if t.complete and now - t.last_read >= self.config.seeder_tti:
                actions.extend(self._close_torrent_conns(h, "seeder idle"))
                del self.torrents[h]
                if self.config.announce:
                    self._dormant[h] = _Dormant(t.metainfo, t.namespace)
                actions.append(TorrentDropped(h, True))
            elif t.state == "downloading" and now - t.last_write >= self.config.leecher_tti:
                actions.extend(self._close_torrent_conns(h, "leecher idle"))
                del self.torrents[h]
                self.announces.eject(h)
                self._fail_waiters(
                    t, DownloadFailed(f"{t.metainfo.digest}: no progress for {now - t.last_write}s")
                )
                actions.append(TorrentDropped(h, False))
        actions.extend(self._announce_tick())
        return actions


def _useful(msg: Message, d: PieceDispatcher) -> bool:
    """Whether ``msg`` shows its connection worth a slot: it asks for a piece we have or
    offers one we lack."""
    if isinstance(msg, PieceRequest | AnnouncePiece):
        if not 0 <= msg.index < d.metainfo.num_pieces:
            return False
        have = msg.index in d.have
        return have if isinstance(msg, PieceRequest) else not have
    return isinstance(msg, Complete) and not d.complete
