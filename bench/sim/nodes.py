"""
Nodes of the simulation: the engine's driver over simulated connections, and the tracker.

:class:`SimNode` does for a :class:`~kraken.torrent.scheduler.Scheduler` what
``kraken.protocols.peer.PeerNode`` / ``PeerProtocol`` do on a reactor: it performs
the engine's actions (Send, SendPiece, Close, Dial, Announce, Commit) and reports
what happens back (handshakes, messages, payload start and end, piece written,
piece sent, connection lost, announce results, the 1 s tick with the connections
that received payload bytes).  :class:`SimTracker` answers announces with the
tracker's handout policy (:func:`kraken.peers.handout.hand_out`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from attrs import define, field

from bench.sim.network import FRAME_PREFIX, Frame, Host, Payload, Simulation, Stream
from kraken.core import InfoHash, PeerID, PeerInfo
from kraken.peers.handout import DEFAULT_HANDOUT_LIMIT, hand_out
from kraken.torrent.actions import (
    Action,
    Announce,
    Close,
    Commit,
    ConnId,
    Dial,
    Send,
    SendPiece,
    TorrentDropped,
)
from kraken.torrent.dispatch import PayloadVerdict
from kraken.torrent.messages import (
    AnnouncePiece,
    CancelPiece,
    Complete,
    Handshake,
    Message,
    PiecePayload,
    PieceRequest,
)
from kraken.torrent.scheduler import HandshakeRejected, Scheduler

_FIXED_SIZES: Final = {
    PieceRequest: len(PieceRequest(0).encode()),
    AnnouncePiece: len(AnnouncePiece(0).encode()),
    CancelPiece: len(CancelPiece(0).encode()),
    Complete: len(Complete().encode()),
}
#: A PIECE_PAYLOAD header frame on the wire (prefix included).
PAYLOAD_HEADER: Final = FRAME_PREFIX + len(PiecePayload(0, 0).encode())
MIB: Final = 1024 * 1024


def frame_size(msg: Message) -> int:
    """Bytes of ``msg`` on the wire: the length prefix and its encoding (docs/protocol.md)."""
    size = _FIXED_SIZES.get(type(msg))
    if size is None:
        size = len(msg.encode())
    return FRAME_PREFIX + size


@define
class Delays:
    """Times the driver's blocking work takes (seconds per MiB of piece), and the tick."""

    #: Reading a piece before it is streamed (page cache).
    read_per_mib: float = 0.002
    #: Verifying (sha256) and writing a received piece: 2 ms per 512 KiB.
    write_per_mib: float = 0.004
    #: Making a complete blob final (rename).
    commit: float = 0.001
    tick: float = 1.0


@define
class WaitStats:
    """Where requests wait, summed over a node's requests (seconds)."""

    #: Request sent -> its PIECE_PAYLOAD header arrives (queued at the sender, plus latency).
    queued: float = 0.0
    #: Header -> last byte of the payload.
    transfer: float = 0.0
    payloads: int = 0
    from_origins: int = 0
    discarded: int = 0


class Connection:
    """Two endpoints and a stream each way; either side may close it."""

    def __init__(self, dialler: SimNode, acceptor: SimNode, conn: ConnId, infohash: InfoHash):
        net = dialler.sim.network
        self.dialler = Endpoint(dialler, self, 0, conn, infohash)
        self.acceptor = Endpoint(acceptor, self, 1, None, None)
        self.up = net.stream(
            dialler.host,
            acceptor.host,
            on_frame=self.acceptor.frame_received,
            on_header=self.acceptor.header_received,
            on_payload_end=self.acceptor.payload_ended,
            on_sent=self.dialler.payload_sent,
        )
        self.down = net.stream(
            acceptor.host,
            dialler.host,
            on_frame=self.dialler.frame_received,
            on_header=self.dialler.header_received,
            on_payload_end=self.dialler.payload_ended,
            on_sent=self.acceptor.payload_sent,
        )
        self.closed = False

    def out(self, side: int) -> Stream:
        """The stream ``side`` sends on."""
        return self.up if side == 0 else self.down

    def peer(self, side: int) -> Endpoint:
        """The other endpoint."""
        return self.acceptor if side == 0 else self.dialler

    def close(self, side: int) -> None:
        """``side`` closes: nothing more crosses; the other side notices after the latency."""
        if self.closed:
            return
        self.closed = True
        self.up.close()
        self.down.close()
        other = self.peer(side)
        sim = other.node.sim
        sim.call_later(self.up.latency, other.lost)


class Endpoint:
    """One side of a connection, as ``PeerProtocol`` is."""

    def __init__(
        self,
        node: SimNode,
        connection: Connection,
        side: int,
        conn: ConnId | None,
        infohash: InfoHash | None,
    ) -> None:
        self.node = node
        self.connection = connection
        self.side = side
        self.conn = conn
        self.infohash = infohash
        #: "handshake", "active" or "closed".
        self.state = "handshake"
        #: payload bytes arrived since the node's last tick.
        self.payload_bytes = False
        #: (index, received into a buffer) of the payload arriving now.
        self.receiving: tuple[int, bool] | None = None
        self.header_at = 0.0
        #: index -> when we requested it on this connection.
        self.requested_at: dict[int, float] = {}
        self.peer_origin = False

    def send(self, msg: Message) -> None:
        """Queue a control frame."""
        if self.state != "closed":
            if isinstance(msg, PieceRequest):
                self.requested_at[msg.index] = self.node.sim.now
            self.connection.out(self.side).send(Frame(msg, frame_size(msg)))

    def close(self) -> None:
        """Close from our side (the engine has already forgotten the connection)."""
        if self.state == "closed":
            return
        self.state = "closed"
        self.receiving = None
        self.connection.close(self.side)

    def lost(self) -> None:
        """The other side closed: tell the engine unless it closed us first."""
        if self.state == "closed":
            return
        was = self.state
        self.state = "closed"
        self.receiving = None
        node = self.node
        if self.conn is not None and node.endpoints.get(self.conn) is self:
            del node.endpoints[self.conn]
            if was == "active":
                node.run(node.scheduler.conn_lost(self.conn, "connection lost"))
            else:
                node.run(node.scheduler.dial_failed(self.conn, "connection lost"))

    # -- receiving ---------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        """A control frame arrived."""
        if self.state == "closed":
            return
        msg = frame.message
        node = self.node
        if self.state == "handshake":
            assert isinstance(msg, Handshake)
            if self.side == 0:
                assert self.conn is not None
                self.state = "active"
                self.peer_origin = msg.origin
                node.run(node.scheduler.dial_succeeded(self.conn, msg))
            else:
                node.incoming(self, msg)
            return
        assert self.conn is not None
        node.run(node.scheduler.message(self.conn, msg))

    def header_received(self, item: Payload) -> None:
        """A PIECE_PAYLOAD header arrived: ask the engine what to do with the bytes."""
        if self.state != "active" or self.conn is None:
            return
        node = self.node
        verdict, actions = node.scheduler.payload_start(self.conn, item.index, item.length)
        node.run(actions)
        if verdict == PayloadVerdict.REJECT or self.state == "closed":
            return
        now = node.sim.now
        asked = self.requested_at.pop(item.index, None)
        if asked is not None:
            node.stats.queued += now - asked
        self.header_at = now
        self.receiving = (item.index, verdict == PayloadVerdict.RECEIVE)
        self.payload_bytes = True

    def payload_ended(self, item: Payload) -> None:
        """A payload's last byte arrived."""
        receiving, self.receiving = self.receiving, None
        if self.state != "active" or self.conn is None or receiving is None:
            return
        node = self.node
        self.payload_bytes = True
        stats = node.stats
        stats.transfer += node.sim.now - self.header_at
        stats.payloads += 1
        index, buffered = receiving
        if not buffered:
            stats.discarded += 1
            return
        verdict, actions = node.scheduler.payload_end(self.conn, index)
        if verdict == PayloadVerdict.ACCEPT:
            if self.peer_origin:
                stats.from_origins += 1
            node.write_piece(self.conn, self.infohash, index, item.length)
        else:
            stats.discarded += 1
        node.run(actions)

    def payload_sent(self, item: Payload) -> None:
        """Our payload's last byte left: the engine may send the next piece."""
        node = self.node
        if (
            self.state == "active"
            and self.conn is not None
            and node.endpoints.get(self.conn) is self
        ):
            node.run(node.scheduler.piece_sent(self.conn, item.index))

    def send_piece(self, index: int, length: int) -> None:
        """The piece was read: stream it."""
        if self.state == "active":
            self.connection.out(self.side).send(Payload(index, length, PAYLOAD_HEADER))


@define(eq=False)
class SimTracker:
    """The tracker: an in-process peer store and the real handout policy."""

    sim: Simulation
    rng: random.Random
    origins: list[PeerInfo] = field(factory=list)
    interval: float = 3.0
    latency: float = 0.001
    limit: int = DEFAULT_HANDOUT_LIMIT
    _agents: list[PeerInfo] = field(factory=list)
    _index: dict[PeerID, int] = field(factory=dict)
    announces: int = 0

    def announce(self, node: SimNode, action: Announce) -> None:
        """An announce leaves ``node``; its answer comes back a round trip later."""
        self.sim.call_later(self.latency, self._answer, node, action)

    def _answer(self, node: SimNode, action: Announce) -> None:
        self.announces += 1
        me = PeerInfo(node.info.peer_id, node.info.ip, node.info.port, complete=action.complete)
        at = self._index.get(me.peer_id)
        if at is None:
            self._index[me.peer_id] = len(self._agents)
            self._agents.append(me)
        else:
            self._agents[at] = me
        k = min(self.limit + 1, len(self._agents))
        stored = self.rng.sample(self._agents, k)
        peers = hand_out(me, stored, self.origins, self.limit, self.rng)
        self.sim.call_later(self.latency, node.announced, action.infohash, peers, self.interval)


class SimNode:
    """A Scheduler on the simulated network: performs its actions, reports results back."""

    def __init__(
        self,
        sim: Simulation,
        host: Host,
        scheduler: Scheduler,
        *,
        info: PeerInfo,
        directory: dict[PeerID, SimNode],
        tracker: SimTracker,
        delays: Delays,
    ) -> None:
        self.sim = sim
        self.host = host
        self.scheduler = scheduler
        self.info = info
        self.directory = directory
        self.tracker = tracker
        self.delays = delays
        self.endpoints: dict[ConnId, Endpoint] = {}
        self.piece_lengths: dict[InfoHash, int] = {}
        self.started: float | None = None
        self.done: float | None = None
        self.stats = WaitStats()

    def start(self) -> None:
        """Start the 1 s tick."""
        self.started = self.sim.now
        self.sim.call_later(self.delays.tick, self.tick)

    def tick(self) -> None:
        """The engine's timer, with the connections that received payload bytes."""
        progressed = []
        for conn, ep in self.endpoints.items():
            if ep.payload_bytes or ep.receiving is not None:
                ep.payload_bytes = False
                progressed.append(conn)
        self.run(self.scheduler.tick(progressed))
        self.sim.call_later(self.delays.tick, self.tick)

    def finished(self, error: BaseException | None) -> None:
        """The download's waiter: record when it ended."""
        if error is None:
            self.done = self.sim.now

    # -- actions -------------------------------------------------------------------

    def run(self, actions: Sequence[Action]) -> None:
        """Perform the engine's actions in order."""
        for a in actions:
            if isinstance(a, Send):
                ep = self.endpoints.get(a.conn)
                if ep is not None:
                    ep.send(a.message)
            elif isinstance(a, SendPiece):
                ep = self.endpoints.get(a.conn)
                if ep is not None:
                    length = self.scheduler.torrents[a.infohash].metainfo.piece_size(a.index)
                    self.sim.call_later(
                        self.delays.read_per_mib * length / MIB, ep.send_piece, a.index, length
                    )
            elif isinstance(a, Close):
                ep = self.endpoints.pop(a.conn, None)
                if ep is not None:
                    ep.close()
            elif isinstance(a, Dial):
                self._dial(a)
            elif isinstance(a, Announce):
                self.tracker.announce(self, a)
            elif isinstance(a, Commit):
                self.sim.call_later(self.delays.commit, self._committed, a.infohash)
            elif isinstance(a, TorrentDropped):
                pass

    def _dial(self, action: Dial) -> None:
        target = self.directory.get(action.peer.peer_id)
        latency = (self.host.latency + (target.host.latency if target else 0.0)) / 2
        if target is None:
            self.sim.call_later(2 * latency, self._dial_refused, action.conn)
            return
        connection = Connection(self, target, action.conn, action.infohash)
        self.endpoints[action.conn] = connection.dialler
        # TCP's SYN / SYN-ACK: the dialler writes its handshake a round trip later.
        self.sim.call_later(2 * latency, self._connected, connection.dialler)

    def _dial_refused(self, conn: ConnId) -> None:
        self.run(self.scheduler.dial_failed(conn, "connection refused"))

    def _connected(self, ep: Endpoint) -> None:
        if ep.state == "closed" or ep.conn is None:
            return
        if ep.conn not in self.scheduler.conns:
            self.endpoints.pop(ep.conn, None)
            ep.close()
            return
        assert ep.infohash is not None
        ep.send(self.scheduler.handshake_for(ep.infohash))

    def _committed(self, h: InfoHash) -> None:
        self.run(self.scheduler.commit_done(h))

    def announced(self, h: InfoHash, peers: Sequence[PeerInfo], interval: float) -> None:
        """The tracker's answer arrived."""
        self.run(self.scheduler.announce_result(h, peers, interval))

    # -- incoming ------------------------------------------------------------------

    def incoming(self, ep: Endpoint, hs: Handshake) -> None:
        """An incoming handshake: accept or close (no blob here: the archive lookup fails)."""
        if not self.scheduler.has_torrent(hs.infohash):
            ep.close()
            return
        try:
            source = ep.connection.dialler.node.info.ip
            conn, actions = self.scheduler.accept(hs, source)
        except HandshakeRejected:
            ep.close()
            return
        ep.conn = conn
        ep.infohash = hs.infohash
        ep.state = "active"
        ep.peer_origin = hs.origin
        self.endpoints[conn] = ep
        ep.send(self.scheduler.handshake_for(hs.infohash))
        self.run(actions)

    # -- storage -------------------------------------------------------------------

    def write_piece(self, conn: ConnId, h: InfoHash | None, index: int, length: int) -> None:
        """Verify and write a received piece (a delay), then report it written."""
        assert h is not None
        self.sim.call_later(self.delays.write_per_mib * length / MIB, self._written, conn, h, index)

    def _written(self, conn: ConnId, h: InfoHash, index: int) -> None:
        self.run(self.scheduler.piece_written(conn, h, index))
