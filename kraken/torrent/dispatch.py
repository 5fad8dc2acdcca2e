"""
Piece dispatch for one torrent: who has what, what to request from whom.

Invariants, kept after every method returns (and checked by hypothesis in
tests/torrent/test_dispatch_properties.py):

- no peer has more outstanding requests than its pipeline limit;
- no request is outstanding for a piece we have, or to a peer lacking it;
- outside endgame no piece is requested from two peers; never twice from one;
- every missing piece not being written is requested from some peer
  whenever a connected peer may serve it (:meth:`PieceDispatcher.may_request`:
  it has the piece, has not failed it recently, and, for an origin, no
  connected agent could serve it instead) and has spare pipeline.

Request timeout (DESIGN 5, ``EngineConfig.request_timeout``) measures a
peer's *progress*, not how long a request has been queued: an uploader sends
one piece at a time per connection while it serves many connections, so our
later requests wait behind earlier ones through no fault of the peer.  Each
peer has one stall clock, restarted when a request is sent to it while
nothing else was outstanding, when a PIECE_PAYLOAD header arrives from it,
when payload bytes arrive (reported by the driver with ``progress``, about
once a tick), and when a payload ends.  A peer whose clock reaches the
timeout with requests outstanding is stalled: every request to it is
cancelled (CANCEL_PIECE, so it does not send them later), marked failed for
that peer and given to other peers.

Selection is rarest first (fewest connected peers have it) with a random
tie-break.  Origins are asked only for pieces that no connected agent can
give, never for endgame duplicates, and (``origin_fallback_below``, off by
default) only while fewer than that many requests are outstanding to agents:
the origins' upload is the swarm's scarcest resource and should bring in
pieces the neighbourhood lacks, not copies that agents can trade.  Endgame (few
pieces missing) requests a piece from several peers and cancels the others
when one copy has been written.

Serving: one piece at a time per connection, in request order; with
``upload_slots`` at most that many pieces of the torrent at once over all
connections, the others waiting their turn oldest first.  An origin
(``origin_spread_window``) refuses, with ERROR(SENT_ELSEWHERE), a request for
a piece it accepted a request for from another peer within that window: the
first copy is on its way into the swarm, and the origin's upload should go to
pieces it has not sent.  The requester treats it as a failed request (that
origin, that piece, for the spread window instead of 30 s) and gets the piece
from an agent meanwhile.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum

from kraken.core import Bitfield, InfoHash, MetaInfo, PeerID
from kraken.core.bitfield import mask_indices
from kraken.torrent.actions import Action, Close, ConnId, EngineConfig, Send, SendPiece
from kraken.torrent.messages import AnnouncePiece, CancelPiece, Error, ErrorCode, PieceRequest


class PayloadVerdict(Enum):
    """What to do with the raw bytes following a PIECE_PAYLOAD header."""

    RECEIVE = "receive"
    """Read the bytes into a buffer, then call ``payload_end``."""
    ACCEPT = "accept"
    """Verify and write the received bytes, report ``piece_written`` or ``piece_failed``."""
    DISCARD = "discard"
    """Read and throw away (a duplicate or a cancelled request)."""
    REJECT = "reject"
    """A protocol violation: the engine has closed the connection."""


class PeerState:
    """What we know of one connected peer of this torrent."""

    __slots__ = (
        "bitfield",
        "conn",
        "created",
        "failed",
        "forgiven",
        "last_progress",
        "limit",
        "origin",
        "peer_id",
        "pending",
        "receiving",
        "sending",
        "stall_clock",
        "uploads",
    )

    def __init__(
        self,
        conn: ConnId,
        peer_id: PeerID,
        bitfield: Bitfield,
        *,
        origin: bool,
        limit: int,
        now: float,
    ) -> None:
        self.conn = conn
        self.peer_id = peer_id
        self.bitfield = bitfield
        self.origin = origin
        self.limit = limit
        #: index -> when we sent our outstanding request for it to this peer.
        self.pending: dict[int, float] = {}
        #: cancelled or expired requests whose payload we still tolerate.
        self.forgiven: set[int] = set()
        #: index -> when this peer failed (timeout, error) a request for it.
        self.failed: dict[int, float] = {}
        self.uploads: deque[int] = deque()
        #: index of the payload whose raw bytes are arriving now.
        self.receiving: int | None = None
        self.sending: int | None = None
        self.created = now
        self.last_progress = now
        #: start of the current wait for this peer's progress (see the module doc).
        self.stall_clock = now


class PieceDispatcher:
    """Request and serve pieces of one torrent among its connected peers."""

    def __init__(
        self,
        infohash: InfoHash,
        metainfo: MetaInfo,
        have: Bitfield,
        config: EngineConfig,
        *,
        rng: random.Random,
        now: Callable[[], float],
    ) -> None:
        if have.length != metainfo.num_pieces:
            raise ValueError(f"bitfield of {have.length} for {metainfo.num_pieces} pieces")
        self.infohash = infohash
        self.metainfo = metainfo
        self.have = have.copy()
        self.config = config
        self._rng = rng
        self._now = now
        self.missing: set[int] = set(have.missing())
        #: pieces whose bytes were accepted and are being verified/written -> from whom.
        self.writing: dict[int, ConnId] = {}
        #: index -> connections with an outstanding request for it.
        self.requested: dict[int, set[ConnId]] = {}
        self.avail = [0] * metainfo.num_pieces
        #: like ``avail``, counting only peers that are not origins.
        self.agent_avail = [0] * metainfo.num_pieces
        #: ``levels[k]``: the pieces ``avail`` counts ``k`` times, as an integer (bit i =
        #: piece i); ``agent_levels`` the same for ``agent_avail``.  Requests are chosen
        #: level by level, so that a peer holding every piece costs no scan of them.
        everything = (1 << metainfo.num_pieces) - 1
        self.levels: list[int] = [everything]
        self.agent_levels: list[int] = [everything]
        self.peers: dict[ConnId, PeerState] = {}
        self.timeout = config.request_timeout(metainfo.piece_length)
        #: connections a piece is being sent on (at most ``config.upload_slots``).
        self._senders: set[ConnId] = set()
        #: the earliest moment a recorded failure lapses (then :meth:`expire` refills).
        self._next_lapse = math.inf
        #: origins: piece -> when and to whom a request for it was last accepted.
        self._served_at: dict[int, tuple[float, ConnId]] = {}
        #: connections with queued requests waiting for an upload slot, oldest first.
        self._upload_wait: deque[ConnId] = deque()
        #: the origins of the blob we know of (the tracker hands out every one).
        self._origins: frozenset[PeerID] = frozenset()
        #: origin -> its home pieces (see :meth:`learn_origins`), as an integer.
        self._home: dict[PeerID, int] = {}
        self._started = now()
        #: whether the peers were refilled when foreign pieces became allowed.
        self._foreign_refilled = False

    # -- queries ---------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether every piece has been written."""
        return not self.missing

    def endgame(self) -> bool:
        """Whether duplicate requests are allowed."""
        return len(self.missing) <= self.config.endgame()

    def interesting(self, peer: PeerState) -> bool:
        """Whether either side has something the other lacks."""
        return self.have.has_any_not_in(peer.bitfield) or peer.bitfield.has_any_not_in(self.have)

    def _failed_recently(self, peer: PeerState, index: int, now: float) -> bool:
        when = peer.failed.get(index)
        if when is None:
            return False
        if now - when >= self.config.blacklist_duration:
            del peer.failed[index]
            return False
        return True

    def eligible(self, peer: PeerState, index: int, now: float) -> bool:
        """Whether ``index`` may be requested from an agent ``peer`` now (ignoring its quota)."""
        if index not in self.missing or index in self.writing or index in peer.pending:
            return False
        if index not in peer.bitfield or self._failed_recently(peer, index, now):
            return False
        return self.endgame() or not self.requested.get(index)

    def _agent_requests(self) -> int:
        return sum(len(p.pending) for p in self.peers.values() if not p.origin)

    def may_request(self, peer: PeerState, index: int, now: float) -> bool:
        """Whether ``index`` may be requested from ``peer`` now (ignoring its quota)."""
        if peer.origin:
            below = self.config.origin_fallback_below
            if below is not None and self._agent_requests() >= below:
                return False
            return self._origin_eligible(peer, index, now)
        return self.eligible(peer, index, now)

    def _origin_eligible(self, peer: PeerState, index: int, now: float) -> bool:
        """
        Whether ``index`` may be requested from the origin ``peer``: as :meth:`eligible`,
        but only pieces that no connected agent can give us, and never a second copy
        (endgame duplicates go to agents).
        """
        if not self.eligible(peer, index, now) or self.requested.get(index):
            return False
        home = self._home_of(peer)
        if home is not None and not home >> index & 1 and not self._foreign_allowed(now):
            return False
        if not self.agent_avail[index]:
            return True
        return not any(
            not p.origin and index in p.bitfield and not self._failed_recently(p, index, now)
            for p in self.peers.values()
        )

    def learn_origins(self, origins: Iterable[PeerID]) -> list[Action]:
        """
        Note the blob's origins (from the tracker's handout and connected origins); each
        gets an equal, interleaved share of the pieces as its *home*: of n origins sorted
        by peer id, the one at rank r is home to the pieces i with i mod n = r.

        An origin is asked for its home pieces first, and for the others' only once
        ``origin_spread_window`` has passed since the download began (so that an origin
        that is down holds nothing back for long).  Every agent gets the same origins
        from the tracker, so agents that reach different origins ask them for different
        pieces: without it the two origins of bench.sim sent 40 % of the blob twice
        (each origin refuses only its own repeats, ``origin_spread_window``), and the
        last piece left the origins seconds later than it had to.
        """
        if not self._learn(origins):
            return []
        # Shares moved: an origin may now be asked for pieces that were another's.
        return self.fill_all()

    def _learn(self, origins: Iterable[PeerID]) -> bool:
        """Add ``origins`` to the known ones and share the pieces anew; whether any was new."""
        known = self._origins | frozenset(origins)
        if known == self._origins:
            return False
        self._origins = known
        ranked = sorted(known, key=lambda p: p.hex)
        n = len(ranked)
        pieces = self.metainfo.num_pieces
        self._home = {}
        for rank, origin in enumerate(ranked):
            bits = bytearray((pieces + 7) // 8)
            for i in range(rank, pieces, n):
                bits[i >> 3] |= 1 << (i & 7)
            self._home[origin] = int.from_bytes(bits, "little")
        return True

    def _home_of(self, peer: PeerState) -> int | None:
        """The home pieces of an origin ``peer`` when there are several origins, else None."""
        if not peer.origin or len(self._home) < 2:
            return None
        return self._home.get(peer.peer_id)

    def _foreign_allowed(self, now: float) -> bool:
        """
        Whether an origin may be asked for pieces that are home to another origin.

        Not before ``origin_spread_window`` from the start: until then the home origin
        (usually not connected to us, but to other agents) is expected to bring them
        into the swarm; after it, an origin that is down or slow must not hold its home
        pieces back forever.  Asking for them at once sent 33 % of the blob twice
        (bench.sim, 200 agents, both origins' sends counted per piece).
        """
        window = self.config.origin_spread_window
        return window is None or now - self._started >= window

    # -- peers -----------------------------------------------------------------

    def add_peer(
        self, conn: ConnId, peer_id: PeerID, bitfield: Bitfield, origin: bool
    ) -> list[Action]:
        """A connection became active; request what it has."""
        limit = self.config.origin_pipeline_limit if origin else self.config.pipeline_limit
        now = self._now()
        peer = PeerState(conn, peer_id, bitfield.copy(), origin=origin, limit=limit, now=now)
        self.peers[conn] = peer
        for i in peer.bitfield:
            self._gain(peer, i)
        if origin and self._learn((peer_id,)):
            return self.fill_all()
        return self._fill(peer)

    def remove_peer(self, conn: ConnId) -> list[Action]:
        """A connection is gone: its requests go to other peers."""
        peer = self.peers.pop(conn, None)
        if peer is None:
            return []
        for i in peer.bitfield:
            _count(self.avail, self.levels, i, -1)
            if not peer.origin:
                _count(self.agent_avail, self.agent_levels, i, -1)
        for i in peer.pending:
            self.requested[i].discard(conn)
        if conn in self._senders:
            self._senders.discard(conn)
            return self._start_waiting() + self.fill_all()
        return self.fill_all()

    def _gain(self, peer: PeerState, index: int) -> None:
        _count(self.avail, self.levels, index, 1)
        if not peer.origin:
            _count(self.agent_avail, self.agent_levels, index, 1)

    def _violation(self, peer: PeerState, reason: str) -> list[Action]:
        return [Close(peer.conn, reason, blacklisted=True)]

    # -- requesting ------------------------------------------------------------

    def limit_of(self, peer: PeerState) -> int:
        """
        Requests ``peer`` may have outstanding now.

        An origin that is our only peer gets the agents' pipeline depth: nothing is traded
        then, and one request at a time leaves its link idle for a round trip per piece
        (bench.pair: ratio 0.46-0.60 with 1, 0.98-1.03 with 2, for 8 MiB pieces).
        """
        if peer.origin and not any(not p.origin for p in self.peers.values()):
            return max(peer.limit, self.config.pipeline_limit)
        return peer.limit

    def _fill(self, peer: PeerState) -> list[Action]:
        quota = self.limit_of(peer) - len(peer.pending)
        if quota <= 0 or not self.missing:
            return []
        now = self._now()
        if peer.origin:
            below = self.config.origin_fallback_below
            if below is not None and self._agent_requests() >= below:
                return []
        candidates = self._candidate_mask(peer, now)
        home = self._home_of(peer)
        if home is not None:
            chosen = self._choose(candidates & home, quota, origin=True)
            if len(chosen) < quota:
                chosen += self._choose(candidates & ~home, quota - len(chosen), origin=True)
        else:
            chosen = self._choose(candidates, quota, origin=peer.origin)
        actions: list[Action] = []
        if chosen and not peer.pending and peer.receiving is None:
            peer.stall_clock = now
        for i in chosen:
            peer.pending[i] = now
            peer.forgiven.discard(i)
            self.requested.setdefault(i, set()).add(peer.conn)
            actions.append(Send(peer.conn, PieceRequest(i)))
        return actions

    def _choose(self, candidates: int, quota: int, *, origin: bool) -> list[int]:
        """
        Up to ``quota`` of ``candidates``: rarest first, ties at random.

        Rarest is the fewest connected peers holding the piece; for an origin, first
        the fewest agents, then the fewest peers.  The levels are visited in that order
        and each is intersected with the candidates as integers, so the cost does not
        grow with the number of candidates (a seeder that has every piece made a scan
        of all missing pieces per request a quarter of a downloader's CPU, bench.pair
        at 2048 pieces).
        """
        chosen: list[int] = []
        if not candidates:
            return chosen
        tiers: Iterable[int] = self.levels
        if origin:
            tiers = (a & v for a in self.agent_levels if a & candidates for v in self.levels)
        for tier in tiers:
            found = tier & candidates
            if found:
                chosen.extend(self._sample(found, quota - len(chosen)))
                if len(chosen) >= quota:
                    break
        return chosen

    def _sample(self, mask: int, k: int) -> list[int]:
        """``k`` distinct set bits of ``mask`` chosen uniformly at random (all if fewer)."""
        count = mask.bit_count()
        if count <= k:
            return list(mask_indices(mask))
        width = mask.bit_length()
        if count * 8 >= width:
            # Dense: draw positions until k set ones (at most 8 draws per pick expected).
            picked: list[int] = []
            randrange = self._rng.randrange
            while len(picked) < k:
                i = randrange(width)
                if mask >> i & 1 and i not in picked:
                    picked.append(i)
            return picked
        return self._rng.sample(list(mask_indices(mask)), k)

    def _candidates(self, peer: PeerState, now: float) -> Iterator[int]:
        """
        The pieces :meth:`may_request` allows from ``peer`` (ignoring its quota and the
        origin fallback threshold), ascending.

        The same rules as :meth:`eligible` and :meth:`_origin_eligible`, computed on piece
        sets as integers: what the peer has, less what we hold, are writing or have asked
        for, and (for an origin) less what some connected agent can give; only the pieces
        left are visited.  Testing every missing piece in Python on each request made a
        piece's bookkeeping cost grow with the piece count (bench.pair, 2048 pieces of
        128 KiB: the scan was 37 % of the downloader's CPU).
        """
        return mask_indices(self._candidate_mask(peer, now))

    def _candidate_mask(self, peer: PeerState, now: float) -> int:
        """:meth:`_candidates` as an integer (bit i = piece i)."""
        mask = peer.bitfield.mask() & ~self.have.mask()
        taken = 0
        for i in self.writing:
            taken |= 1 << i
        if peer.origin or not self.endgame():
            for p in self.peers.values():
                for i in p.pending:
                    taken |= 1 << i
        else:
            for i in peer.pending:
                taken |= 1 << i
        mask &= ~taken
        if peer.origin and mask:
            # Pieces a connected agent can give us (and has not failed recently) are theirs.
            served = 0
            for p in self.peers.values():
                if not p.origin:
                    has = p.bitfield.mask()
                    served |= has & ~self._recent_failures(p, now) if p.failed else has
            mask &= ~served
        if peer.failed:
            mask &= ~self._recent_failures(peer, now)
        home = self._home_of(peer)
        if home is not None and not self._foreign_allowed(now):
            mask &= home
        return mask

    def _recent_failures(self, peer: PeerState, now: float) -> int:
        """The pieces ``peer`` failed within the blacklist duration, as an integer."""
        failed = 0
        for i in list(peer.failed):
            if self._failed_recently(peer, i, now):
                failed |= 1 << i
        return failed

    def fill_all(self) -> list[Action]:
        """Give every peer with spare pipeline as many requests as it can take."""
        actions: list[Action] = []
        if not self.missing:
            return actions
        for peer in list(self.peers.values()):
            actions.extend(self._fill(peer))
        return actions

    def _mark_failed(self, peer: PeerState, index: int, when: float) -> None:
        """``peer`` failed ``index`` at ``when``; it may be asked again once that lapses."""
        peer.failed[index] = when
        self._next_lapse = min(self._next_lapse, when + self.config.blacklist_duration)

    def progress(self, conn: ConnId) -> None:
        """Payload bytes arrived from this peer: restart its stall clock."""
        peer = self.peers.get(conn)
        if peer is not None:
            peer.stall_clock = self._now()

    def expire(self) -> list[Action]:
        """
        Requests to stalled peers (no progress for the timeout) are retried elsewhere; once
        a failure lapses, its peer may be asked for that piece again.
        """
        now = self._now()
        actions: list[Action] = []
        for peer in self.peers.values():
            if not peer.pending or now - peer.stall_clock < self.timeout:
                continue
            for i in list(peer.pending):
                del peer.pending[i]
                self.requested[i].discard(peer.conn)
                peer.forgiven.add(i)
                self._mark_failed(peer, i, now)
                actions.append(Send(peer.conn, CancelPiece(i)))
        refill = bool(actions)
        if not self._foreign_refilled and len(self._home) > 1 and self._foreign_allowed(now):
            # Origins may now be asked for other origins' pieces: nothing else may come
            # along to refill (e.g. one origin is down and the other is our only peer).
            self._foreign_refilled = refill = True
        if actions or now >= self._next_lapse:
            # A failure that lapsed lets a peer be asked again: nothing else may come along
            # to refill (e.g. the last missing piece, refused by the only peer that has it).
            self._next_lapse = min(
                (
                    when + self.config.blacklist_duration
                    for p in self.peers.values()
                    for when in p.failed.values()
                    if when + self.config.blacklist_duration > now
                ),
                default=math.inf,
            )
            refill = True
        if refill:
            actions.extend(self.fill_all())
        return actions

    # -- messages from the peer ------------------------------------------------

    def _index_ok(self, index: int) -> bool:
        return 0 <= index < self.metainfo.num_pieces

    def on_announce(self, conn: ConnId, index: int) -> list[Action]:
        """The peer has a new piece."""
        peer = self.peers.get(conn)
        if peer is None:
            return []
        if not self._index_ok(index):
            return self._violation(peer, f"announced piece {index} out of range")
        if peer.bitfield.set(index):
            self._gain(peer, index)
        return self._fill(peer)

    def on_complete(self, conn: ConnId) -> list[Action]:
        """The peer has every piece."""
        peer = self.peers.get(conn)
        if peer is None:
            return []
        for i in list(peer.bitfield.missing()):
            peer.bitfield.set(i)
            self._gain(peer, i)
        if self.complete:
            return [Close(conn, "both sides complete")]
        return self._fill(peer)

    def on_error(
        self, conn: ConnId, index: int, code: ErrorCode = ErrorCode.PIECE_UNAVAILABLE
    ) -> list[Action]:
        """
        The peer cannot serve our request for ``index``: do not ask it for that piece again
        for ``blacklist_duration``, or, when an origin sent the piece elsewhere just now
        (SENT_ELSEWHERE), for ``origin_spread_window``: by then it is among the agents, or
        the origin serves it again (the last piece of a sparse neighbourhood must not wait
        30 s).
        """
        peer = self.peers.get(conn)
        if peer is None or index not in peer.pending:
            return []
        del peer.pending[index]
        self.requested[index].discard(conn)
        now = self._now()
        window = self.config.origin_spread_window
        if code == ErrorCode.SENT_ELSEWHERE and window is not None:
            # failed[] holds when the failure began; it lapses blacklist_duration later.
            now -= max(0.0, self.config.blacklist_duration - window)
        self._mark_failed(peer, index, now)
        return self.fill_all()

    def on_request(self, conn: ConnId, index: int) -> list[Action]:
        """The peer asks us for a piece."""
        peer = self.peers.get(conn)
        if peer is None:
            return []
        if not self._index_ok(index):
            return self._violation(peer, f"request for piece {index} out of range")
        if index not in self.have:
            return [Send(conn, Error(index, ErrorCode.PIECE_UNAVAILABLE, "piece not here"))]
        if index == peer.sending or index in peer.uploads:
            return []
        if len(peer.uploads) >= self.config.max_upload_queue:
            return self._violation(peer, f"more than {len(peer.uploads)} requests queued")
        window = self.config.origin_spread_window
        if window is not None and self.config.origin:
            now = self._now()
            last = self._served_at.get(index)
            if last is not None and last[1] != conn and now - last[0] < window:
                return [Send(conn, Error(index, ErrorCode.SENT_ELSEWHERE, "sent to a peer"))]
            self._served_at[index] = (now, conn)
        peer.uploads.append(index)
        return self._next_upload(peer)

    def on_cancel(self, conn: ConnId, index: int) -> list[Action]:
        """The peer no longer wants ``index``."""
        peer = self.peers.get(conn)
        if peer is not None and index in peer.uploads:
            peer.uploads.remove(index)
        return []

    def _next_upload(self, peer: PeerState) -> list[Action]:
        if peer.sending is not None or not peer.uploads:
            return []
        slots = self.config.upload_slots
        if slots is not None and len(self._senders) >= slots:
            if peer.conn not in self._upload_wait:
                self._upload_wait.append(peer.conn)
            return []
        peer.sending = peer.uploads.popleft()
        self._senders.add(peer.conn)
        return [SendPiece(peer.conn, self.infohash, peer.sending)]

    def _upload_done(self, peer: PeerState) -> list[Action]:
        """``peer``'s piece went out: its slot goes to the longest-waiting peer, then to it."""
        peer.sending = None
        self._senders.discard(peer.conn)
        return self._start_waiting(peer)

    def _start_waiting(self, done: PeerState | None = None) -> list[Action]:
        actions: list[Action] = []
        if done is not None and done.uploads and done.conn not in self._upload_wait:
            self._upload_wait.append(done.conn)
        slots = self.config.upload_slots
        while self._upload_wait and (slots is None or len(self._senders) < slots):
            waiting = self.peers.get(self._upload_wait.popleft())
            if waiting is not None:
                actions.extend(self._next_upload(waiting))
        return actions

    def piece_sent(self, conn: ConnId, index: int) -> list[Action]:
        """The driver finished streaming a piece to the peer."""
        peer = self.peers.get(conn)
        if peer is None or peer.sending != index:
            return []
        peer.last_progress = self._now()
        if peer.bitfield.set(index):
            self._gain(peer, index)
        return self._upload_done(peer)

    def send_failed(self, conn: ConnId, index: int, reason: str) -> list[Action]:
        """Reading a piece to send failed: tell the peer, go on with the next."""
        peer = self.peers.get(conn)
        if peer is None or peer.sending != index:
            return []
        return [Send(conn, Error(index, ErrorCode.READ_FAILED, reason)), *self._upload_done(peer)]

    # -- payloads --------------------------------------------------------------

    def payload_start(
        self, conn: ConnId, index: int, length: int
    ) -> tuple[PayloadVerdict, list[Action]]:
        """
        A PIECE_PAYLOAD header arrived: RECEIVE, DISCARD or REJECT its bytes.

        After RECEIVE the driver reads the bytes and calls :meth:`payload_end`; the
        request stays outstanding until then, so a peer vanishing mid-payload leaves
        nothing behind but a request to retry elsewhere.
        """
        peer = self.peers.get(conn)
        if peer is None:
            return PayloadVerdict.DISCARD, []
        if not self._index_ok(index):
            return PayloadVerdict.REJECT, self._violation(peer, f"payload {index} out of range")
        if length != self.metainfo.piece_size(index):
            expected = self.metainfo.piece_size(index)
            return PayloadVerdict.REJECT, self._violation(
                peer, f"payload {index} of {length} bytes, expected {expected}"
            )
        if peer.receiving is not None:
            return PayloadVerdict.REJECT, self._violation(peer, "payload inside a payload")
        if index not in peer.pending and index not in peer.forgiven:
            return PayloadVerdict.REJECT, self._violation(peer, f"unrequested payload {index}")
        peer.stall_clock = self._now()
        if index not in self.missing or index in self.writing:
            self._settle_request(peer, index)
            return PayloadVerdict.DISCARD, self._fill(peer)
        peer.receiving = index
        return PayloadVerdict.RECEIVE, []

    def _settle_request(self, peer: PeerState, index: int) -> None:
        if peer.pending.pop(index, None) is not None:
            self.requested[index].discard(peer.conn)
        peer.forgiven.discard(index)

    def payload_end(self, conn: ConnId, index: int) -> tuple[PayloadVerdict, list[Action]]:
        """All bytes of a RECEIVEd payload are in: ACCEPT (verify and write) or DISCARD."""
        peer = self.peers.get(conn)
        if peer is None or peer.receiving != index:
            return PayloadVerdict.DISCARD, []
        peer.receiving = None
        peer.stall_clock = self._now()
        self._settle_request(peer, index)
        if index not in self.missing or index in self.writing:
            return PayloadVerdict.DISCARD, self._fill(peer)
        self.writing[index] = conn
        return PayloadVerdict.ACCEPT, self._fill(peer)

    def piece_written(self, conn: ConnId, index: int) -> list[Action]:
        """A received piece was verified and stored."""
        if self.writing.get(index) != conn:
            return []
        del self.writing[index]
        self.missing.discard(index)
        self.have.set(index)
        actions: list[Action] = []
        peer = self.peers.get(conn)
        if peer is not None:
            peer.last_progress = self._now()
        for other in self.requested.pop(index, set()):
            other_peer = self.peers[other]
            del other_peer.pending[index]
            other_peer.forgiven.add(index)
            actions.append(Send(other, CancelPiece(index)))
        # A peer that has the piece already (its handshake bitfield or its own
        # announce said so) gains nothing from hearing we have it too.
        announce = AnnouncePiece(index)
        for p in self.peers.values():
            if index not in p.bitfield:
                actions.append(Send(p.conn, announce))
        actions.extend(self.fill_all())
        return actions

    def piece_failed(self, conn: ConnId, index: int, bad_data: bool, reason: str) -> list[Action]:
        """A received piece failed its hash (``bad_data``) or could not be written."""
        if self.writing.get(index) != conn:
            return []
        del self.writing[index]
        peer = self.peers.get(conn)
        if peer is not None:
            self._mark_failed(peer, index, self._now())
            if bad_data:
                # The owner of this dispatcher removes the peer, which refills the others.
                return self._violation(peer, f"piece {index}: {reason}")
        return self.fill_all()

    def connections(self) -> Iterable[ConnId]:
        """Active connections of this torrent."""
        return list(self.peers)


def _count(counts: list[int], levels: list[int], index: int, step: int) -> None:
    """Add ``step`` to piece ``index``'s count and move it to the level of the new count."""
    level = counts[index]
    counts[index] = level + step
    bit = 1 << index
    levels[level] &= ~bit
    if level + step == len(levels):
        levels.append(0)
    levels[level + step] |= bit
