"""Scheduler unit tests with a fake clock and many fake peers (no I/O)."""

from __future__ import annotations

import itertools
import random

from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, MetaInfo, PeerID, PeerInfo
from kraken.torrent.actions import (
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
from kraken.torrent.bandwidth import BandwidthLimiter, TokenBucket
from kraken.torrent.dispatch import PayloadVerdict
from kraken.torrent.messages import (
    AnnouncePiece,
    CancelPiece,
    Complete,
    Error,
    ErrorCode,
    Handshake,
    PieceRequest,
)
from kraken.torrent.scheduler import DownloadFailed, HandshakeRejected, Scheduler

PIECES = 8
META = MetaInfo.of_bytes(b"x" * 1024 * PIECES, 1024)
H = META.infohash
ME = PeerID("f" * 40)


def pid(i: int) -> PeerID:
    """Peer id number ``i``."""
    return PeerID(f"{i:040x}")


def peer(i: int, origin: bool = False) -> PeerInfo:
    """Tracker record of peer ``i``."""
    return PeerInfo(pid(i), "10.0.0.2", 1000 + i, origin=origin)


class Harness:
    """A scheduler on a fake clock."""

    def __init__(self, **config) -> None:
        self.t = 0.0
        self.s = Scheduler(ME, lambda: self.t, random.Random(1), EngineConfig(**config))
        self.results: list = []

    def download(self, have=()) -> list:
        """Start downloading META."""
        return self.s.add_torrent(META, "ns", Bitfield.of(PIECES, have), waiter=self.results.append)

    def hs(self, i: int, bits=(), origin=False) -> Handshake:
        """Peer i's handshake."""
        return Handshake(pid(i), H, META.digest, "ns", Bitfield.of(PIECES, bits), origin)

    def connect(self, i: int, bits=()) -> tuple[ConnId, list]:
        """Dial peer i and complete its handshake."""
        dial = [a for a in self.s.announce_result(H, [peer(i)], 3.0) if isinstance(a, Dial)]
        assert len(dial) == 1, dial
        return dial[0].conn, self.s.dial_succeeded(dial[0].conn, self.hs(i, bits))

    def deliver(self, conn: ConnId, index: int) -> list:
        """Peer delivers piece ``index`` and it is written."""
        verdict, actions = self.s.payload_start(conn, index, 1024)
        assert verdict == PayloadVerdict.RECEIVE, verdict
        verdict, more = self.s.payload_end(conn, index)
        assert verdict == PayloadVerdict.ACCEPT
        return actions + more + self.s.piece_written(conn, H, index)


def requests(actions, conn=None) -> list[int]:
    """Indices requested (on ``conn``)."""
    return [
        a.message.index
        for a in actions
        if isinstance(a, Send)
        and isinstance(a.message, PieceRequest)
        and (conn is None or a.conn == conn)
    ]


ALL = range(PIECES)


class ConnectionPolicyTests(SynchronousTestCase):
    """Limits, blacklist, idle and lifetime."""

    def test_download_announces_at_once(self) -> None:
        """Starting a download announces immediately (incomplete)."""
        h = Harness()
        self.assertEqual(h.download(), [Announce(H, META.digest, "ns", False)])

    def test_dials_up_to_capacity_in_tracker_order(self) -> None:
        """Without a dial quota, 15 peers from the tracker: the first 10 are dialled, ourselves
        skipped."""
        h = Harness(max_dials_per_torrent=None)
        h.download()
        peers = [PeerInfo(ME, "10.0.0.9", 9), *(peer(i) for i in range(15))]
        dials = h.s.announce_result(H, peers, 3.0)
        self.assertEqual([d.peer.peer_id for d in dials], [pid(i) for i in range(10)])
        self.assertEqual(h.s.announce_result(H, [peer(20)], 3.0), [])

    def test_dials_leave_slots_for_incoming(self) -> None:
        """
        With max_dials_per_torrent=5, an announce dials 5 of 15 peers; the other 5 slots
        still accept incoming handshakes, and a slot freed by a lost dial is dialled again.
        """
        h = Harness(max_dials_per_torrent=5)
        h.download()
        dials = h.s.announce_result(H, [peer(i) for i in range(15)], 3.0)
        self.assertEqual([d.peer.peer_id for d in dials], [pid(i) for i in range(5)])
        self.assertEqual(h.s.announce_result(H, [peer(i) for i in range(5, 15)], 3.0), [])
        for i in range(20, 25):
            h.s.accept(h.hs(i, bits=[i % PIECES]))  # offering a piece we lack: useful
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(25))
        h.s.dial_failed(dials[0].conn)
        # One slot is free again, and it may hold one of our dials.
        again = h.s.announce_result(H, [peer(i) for i in range(5, 15)], 3.0)
        self.assertEqual([d.peer.peer_id for d in again], [pid(5)])

    def test_incoming_connections_do_not_use_the_dial_quota(self) -> None:
        """Accepted connections count against the total only: dials still fill the rest."""
        h = Harness(max_dials_per_torrent=5)
        h.download()
        for i in range(20, 27):
            h.s.accept(h.hs(i))
        dials = h.s.announce_result(H, [peer(i) for i in range(15)], 3.0)
        self.assertEqual(len(dials), 3)  # 10 slots - 7 incoming; under the quota of 5

    def test_failed_dial_blacklists_until_expiry(self) -> None:
        """A failed dial blacklists the peer for 30 s, then it is dialled again."""
        h = Harness()
        h.download()
        (dial,) = h.s.announce_result(H, [peer(1)], 3.0)
        h.s.dial_failed(dial.conn)
        self.assertEqual(h.s.announce_result(H, [peer(1)], 3.0), [])
        h.t = 29.0
        self.assertEqual(h.s.announce_result(H, [peer(1)], 3.0), [])
        h.t = 30.5
        self.assertEqual(len(h.s.announce_result(H, [peer(1)], 3.0)), 1)

    def test_accept_rejections(self) -> None:
        """Incoming handshakes are refused when at capacity, blacklisted, self, or both complete."""
        h = Harness(max_conns_per_torrent=2)
        h.download()
        h.s.accept(h.hs(1, bits=[0]))
        conn2, _ = h.s.accept(h.hs(2, bits=[1]))
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(3))
        h.s.conn_lost(conn2)
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(2))  # blacklisted
        self.assertRaises(
            HandshakeRejected,
            h.s.accept,
            Handshake(ME, H, META.digest, "ns", Bitfield(PIECES)),
        )
        seeder = Harness()
        seeder.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
        self.assertRaises(HandshakeRejected, seeder.s.accept, seeder.hs(1, ALL))
        seeder.s.accept(seeder.hs(2))

    def test_simultaneous_dials_keep_one(self) -> None:
        """Both sides dial each other: the connection dialled by the smaller id survives."""
        h = Harness()
        h.download()
        (dial,) = h.s.announce_result(H, [peer(1)], 3.0)
        conn, actions = h.s.accept(h.hs(1))  # pid(1) < ME: its dial wins
        self.assertIn(Close(dial.conn, "superseded by the peer's own dial"), actions)
        self.assertNotIn(dial.conn, h.s.conns)
        self.assertIn(conn, h.s.conns)

    def test_idle_and_lifetime(self) -> None:
        """No progress for 30 s closes (and blacklists); any connection closes after 1 h."""
        h = Harness()
        h.download()
        conn, _ = h.connect(1, [0])
        h.t = 31
        closes = [a for a in h.s.tick() if isinstance(a, Close)]
        self.assertEqual(closes, [Close(conn, "idle", blacklisted=True)])
        h2 = Harness(conn_idle_timeout=10_000)
        h2.download()
        c, _ = h2.connect(1, [0])
        h2.t = 3601
        self.assertIn(Close(c, "lifetime over"), h2.s.tick())

    def test_completion_clears_blacklist_and_notifies(self) -> None:
        """Completing: commit, then COMPLETE to leechers, close seeders, announce, waiters fire."""
        h = Harness()
        h.download()
        bad, _ = h.connect(9)
        h.s.conn_lost(bad)
        self.assertTrue(h.s.is_blacklisted(H, pid(9)))
        leecher, _ = h.s.accept(h.hs(2))
        seeder, _ = h.connect(1, ALL)
        actions: list = []
        for i in ALL:
            if i in h.s.torrents[H].dispatcher.peers[seeder].pending:
                actions += h.deliver(seeder, i)
            else:
                h.s.torrents[H].dispatcher.peers[seeder].pending[i] = 99.0
                h.s.torrents[H].dispatcher.requested.setdefault(i, set()).add(seeder)
                actions += h.deliver(seeder, i)
        self.assertIn(Commit(H), actions)
        self.assertEqual(h.results, [])
        done = h.s.commit_done(H)
        self.assertIn(Send(leecher, Complete()), done)
        self.assertIn(Close(seeder, "both sides complete"), done)
        self.assertIn(Announce(H, META.digest, "ns", True), done)
        self.assertEqual(h.results, [None])
        self.assertFalse(h.s.is_blacklisted(H, pid(9)))


def seeder() -> Harness:
    """A harness seeding META (as an origin does), 10 slots."""
    h = Harness(origin=True, announce=False)
    h.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
    return h


def reclaimed(actions, conn) -> bool:
    """Whether ``actions`` tell ``conn`` its slot was reclaimed, then close it unblamed."""
    notice = [
        a
        for a in actions
        if isinstance(a, Send)
        and a.conn == conn
        and isinstance(a.message, Error)
        and a.message.code == ErrorCode.SLOT_RECLAIMED
    ]
    closes = [a for a in actions if isinstance(a, Close) and a.conn == conn]
    return len(notice) == 1 and len(closes) == 1 and not closes[0].blacklisted


class AdmissionTests(SynchronousTestCase):
    """Issue 18: handshakes that bring nothing cannot hold the slots others need."""

    def test_per_address_limit(self) -> None:
        """One source address holds at most max_conns_per_address connections of a torrent."""
        h = seeder()
        h.s.accept(h.hs(1), "10.0.0.9")
        h.s.accept(h.hs(2), "10.0.0.9")
        with self.assertRaises(HandshakeRejected) as caught:
            h.s.accept(h.hs(3), "10.0.0.9")
        self.assertIn("10.0.0.9", str(caught.exception))
        h.s.accept(h.hs(3), "10.0.0.10")  # another host
        h.s.accept(h.hs(4))  # no address known: no limit
        h.s.accept(h.hs(5))
        h.s.accept(h.hs(6))
        unlimited = Harness(origin=True, announce=False, max_conns_per_address=None)
        unlimited.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
        for i in range(1, 11):
            unlimited.s.accept(unlimited.hs(i), "127.0.0.1")

    def test_squatters_lose_their_slots_to_newcomers(self) -> None:
        """
        Ten leecher handshakes that are never followed by a request fill a seeder; after
        useful_within (1 s) a newcomer takes the oldest one's slot (told SLOT_RECLAIMED,
        closed, not blacklisted); squatters younger than that keep theirs.
        """
        h = seeder()
        squatters = []
        for i in range(1, 11):
            conn, _ = h.s.accept(h.hs(i), f"10.0.1.{i}")
            squatters.append(conn)
            h.t += 0.1
        h.t = 0.5
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(20), "10.0.2.1")
        h.t = 1.05  # the first squatter is 1.05 s old, the second 0.95 s
        conn, actions = h.s.accept(h.hs(20), "10.0.2.1")
        self.assertTrue(reclaimed(actions, squatters[0]))
        self.assertNotIn(squatters[0], h.s.conns)
        self.assertIn(conn, h.s.conns)
        self.assertEqual(h.s.blacklist, {})
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(21), "10.0.2.2")

    def test_useful_connections_keep_their_slots(self) -> None:
        """Connections that asked for a piece we have are never evicted: the newcomer is refused."""
        h = seeder()
        for i in range(1, 11):
            conn, _ = h.s.accept(h.hs(i), f"10.0.1.{i}")
            h.s.message(conn, PieceRequest(0))
        h.t = 100.0
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(20), "10.0.2.1")

    def test_what_counts_as_useful(self) -> None:
        """A request for a piece we lack, or an announce of one we have, earns nothing."""
        h = Harness()
        h.download(have=[0])
        useless, _ = h.s.accept(h.hs(1), "10.0.1.1")
        h.s.message(useless, PieceRequest(5))  # we do not have 5
        h.s.message(useless, AnnouncePiece(0))  # we have 0
        offering, _ = h.s.accept(h.hs(2), "10.0.1.2")
        h.s.message(offering, AnnouncePiece(3))  # we lack 3
        asking, _ = h.s.accept(h.hs(3), "10.0.1.3")
        h.s.message(asking, PieceRequest(0))
        self.assertFalse(h.s.conns[useless].useful)
        self.assertTrue(h.s.conns[offering].useful)
        self.assertTrue(h.s.conns[asking].useful)

    def test_vouched_newcomers_take_reserved_slots_and_evict_at_once(self) -> None:
        """
        With 2 reserved slots, a newcomer nobody vouches for finds the torrent full at 8;
        one the tracker handed out, or one offering a piece we lack, gets a reserved slot,
        and once all 10 are taken it evicts a useless connection however young.
        """
        h = Harness(reserved_conns_per_torrent=2, max_dials_per_torrent=0)
        h.download()
        idle = [h.s.accept(h.hs(i), f"10.0.1.{i}")[0] for i in range(1, 9)]
        self.assertRaises(HandshakeRejected, h.s.accept, h.hs(9), "10.0.1.9")
        h.s.announce_result(H, [peer(30)], 3.0)  # the tracker hands out peer 30
        handed, _ = h.s.accept(h.hs(30), "10.0.3.1")
        self.assertTrue(h.s.conns[handed].useful)
        h.s.accept(h.hs(31, bits=[2]), "10.0.3.2")  # offers a piece we lack
        self.assertEqual(len(h.s.conns), 10)
        _conn, actions = h.s.accept(h.hs(32, bits=[4]), "10.0.3.3")
        self.assertTrue(reclaimed(actions, idle[0]))
        # Handouts are remembered for handout_memory (60 s) only.
        h.t = 61.0
        h.s.announce_result(H, [peer(40)], 3.0)
        self.assertNotIn(pid(30), h.s.torrents[H].handed_out)

    def test_slot_reclaimed_is_no_fault(self) -> None:
        """Told SLOT_RECLAIMED, a peer closes the connection without blacklisting the sender."""
        h = Harness()
        h.download()
        conn, _ = h.connect(1, bits=[0])
        actions = h.s.message(conn, Error(0, ErrorCode.SLOT_RECLAIMED, "slot given away"))
        self.assertEqual(
            [a for a in actions if isinstance(a, Close)],
            [Close(conn, "the peer gave our slot to another")],
        )
        self.assertNotIn(conn, h.s.conns)
        self.assertFalse(h.s.is_blacklisted(H, pid(1)))


class DispatchTests(SynchronousTestCase):
    """Requests, pipeline, endgame, timeouts, serving."""

    def test_pipeline_limits(self) -> None:
        """3 outstanding requests to an agent, 5 to an origin."""
        h = Harness(pipeline_limit=3, origin_pipeline_limit=5)
        h.download()
        _, actions = h.connect(1, ALL)
        self.assertEqual(len(requests(actions)), 3)
        h = Harness(pipeline_limit=3, origin_pipeline_limit=5)
        h.download()
        (dial,) = h.s.announce_result(H, [peer(2, origin=True)], 3.0)
        actions = h.s.dial_succeeded(dial.conn, h.hs(2, ALL))
        self.assertEqual(len(requests(actions)), 5)

    def test_lone_origin_gets_the_agent_pipeline(self) -> None:
        """
        An origin that is our only peer may have the agents' depth of requests out;
        once an agent is connected, the origin is back to its own limit.
        """
        h = Harness(pipeline_limit=2, origin_pipeline_limit=1)
        h.download()
        (dial,) = h.s.announce_result(H, [peer(2, origin=True)], 3.0)
        origin = dial.conn
        first = requests(h.s.dial_succeeded(origin, h.hs(2, ALL)), origin)
        self.assertEqual(len(first), 2)
        h.connect(1, [])  # an agent with nothing yet: the origin is no longer alone
        actions = h.deliver(origin, first[0])
        self.assertEqual(requests(actions, origin), [])  # one still out = its own limit of 1
        actions = h.deliver(origin, first[1])
        self.assertEqual(len(requests(actions, origin)), 1)

    def test_origins_only_for_what_agents_cannot_give(self) -> None:
        """
        An origin is asked only for pieces no connected agent can serve (agents that
        lack them, or failed them), and never for an endgame duplicate.
        """
        h = Harness(pipeline_limit=1, origin_pipeline_limit=8)
        h.download()
        agent, actions = h.connect(1, [0, 1, 2, 3])
        self.assertEqual(len(requests(actions, agent)), 1)
        (dial,) = h.s.announce_result(H, [peer(2, origin=True)], 3.0)
        origin = dial.conn
        actions = h.s.dial_succeeded(origin, h.hs(2, ALL))
        self.assertEqual(sorted(requests(actions, origin)), [4, 5, 6, 7])
        (asked,) = h.s.torrents[H].dispatcher.peers[agent].pending
        # The origin delivers one piece at 3 s; nothing more is asked of it.
        h.t = 3.0
        self.assertEqual(requests(h.deliver(origin, 4), origin), [])
        # The agent stalls at 4 s: its piece goes to the origin, another of its pieces to it.
        h.t = 4.0
        actions = h.s.tick()
        self.assertIn(Send(agent, CancelPiece(asked)), actions)
        self.assertEqual(requests(actions, origin), [asked])
        (again,) = requests(actions, agent)
        self.assertIn(again, {0, 1, 2, 3} - {asked})
        # Endgame: the last piece is not duplicated onto the origin.
        h = Harness(pipeline_limit=2, origin_pipeline_limit=2)
        h.download(have=range(PIECES - 1))
        _, first = h.connect(1, ALL)
        (dial,) = h.s.announce_result(H, [peer(2, origin=True)], 3.0)
        _, second = h.connect(3, ALL)
        self.assertEqual(requests(first + second), [7, 7])
        actions = h.s.dial_succeeded(dial.conn, h.hs(2, ALL))
        self.assertEqual(requests(actions), [])

    def test_rarest_first(self) -> None:
        """The piece only one peer has is requested before common ones."""
        h = Harness(pipeline_limit=1)
        h.download()
        h.s.accept(h.hs(1, [0, 1, 2]))
        h.s.accept(h.hs(2, [0, 1, 2]))
        conn, actions = h.s.accept(h.hs(3, [1, 5]))
        self.assertEqual(requests(actions, conn), [5])

    def test_never_requests_pieces_we_have(self) -> None:
        """A resumed download requests only the missing pieces."""
        h = Harness(pipeline_limit=8)
        h.download(have=[0, 1, 2, 3, 4])
        _, actions = h.connect(1, ALL)
        self.assertEqual(sorted(requests(actions)), [5, 6, 7])

    def test_timeout_retries_elsewhere(self) -> None:
        """A request to a peer silent for 4 s goes to another peer, not back to the slow one."""
        h = Harness(pipeline_limit=1)
        h.download()
        slow, actions = h.connect(1, [3])
        self.assertEqual(requests(actions), [3])
        other, actions = h.connect(2, [3])
        self.assertEqual(requests(actions), [])
        h.t = 3.9
        self.assertEqual(requests(h.s.tick()), [])
        h.t = 4.0
        actions = h.s.tick()
        self.assertEqual(requests(actions, other), [3])
        self.assertEqual(requests(actions, slow), [])
        # The slow peer's late payload is still welcome.
        verdict, _ = h.s.payload_start(slow, 3, 1024)
        self.assertEqual(verdict, PayloadVerdict.RECEIVE)

    def test_timeout_measures_progress_not_queueing(self) -> None:
        """
        Requests queued behind others at a busy peer do not time out while the peer
        makes progress (payload headers, payload bytes reported at the tick, payload
        ends); a peer that delivers nothing for 4 s is stalled: all its requests are
        cancelled and go elsewhere.
        """
        h = Harness(pipeline_limit=3)
        h.download()
        busy, actions = h.connect(1, ALL)
        first = requests(actions, busy)
        self.assertEqual(len(first), 3)
        # One piece every 3 s: 12 s in, nothing has timed out.
        for step in range(4):
            h.t += 3.0
            pending = sorted(h.s.torrents[H].dispatcher.peers[busy].pending)
            h.deliver(busy, pending[0])
            self.assertEqual([a for a in h.s.tick() if isinstance(a, Send)], [], step)
        # A header at 13 s, bytes reported at the 16 s tick: still making progress.
        h.t = 13.0
        index = sorted(h.s.torrents[H].dispatcher.peers[busy].pending)[0]
        verdict, _ = h.s.payload_start(busy, index, 1024)
        self.assertEqual(verdict, PayloadVerdict.RECEIVE)
        h.t = 16.0
        self.assertEqual(h.s.tick([busy]), [])
        other, actions = h.connect(2, ALL)
        # Nothing more until 20 s: stalled; every request to it is cancelled and retried.
        h.t = 19.9
        self.assertFalse([a for a in h.s.tick() if isinstance(a, Send) and a.conn == busy])
        stuck = set(h.s.torrents[H].dispatcher.peers[busy].pending)
        h.t = 20.0
        actions = h.s.tick()
        cancels = {
            a.message.index
            for a in actions
            if isinstance(a, Send) and a.conn == busy and isinstance(a.message, CancelPiece)
        }
        self.assertEqual(cancels, stuck)
        self.assertTrue(set(requests(actions, other)) & stuck)
        self.assertFalse(set(requests(actions, busy)) & stuck)

    def test_origin_fallback_below(self) -> None:
        """
        With origin_fallback_below=2 an origin is asked only while fewer than 2
        requests are outstanding to agents.
        """
        h = Harness(pipeline_limit=2, origin_pipeline_limit=1, origin_fallback_below=2)
        h.download()
        agent, actions = h.connect(1, [0, 1])
        self.assertEqual(sorted(requests(actions, agent)), [0, 1])
        (dial,) = h.s.announce_result(H, [peer(2, origin=True)], 3.0)
        origin = dial.conn
        self.assertEqual(requests(h.s.dial_succeeded(origin, h.hs(2, ALL))), [])
        actions = h.deliver(agent, 0)
        (asked,) = requests(actions, origin)
        self.assertIn(asked, range(2, PIECES))

    def test_upload_slots(self) -> None:
        """
        With upload_slots=1 one piece is sent at a time over all connections: the
        others wait their turn in order of arrival, and a slot held by a connection
        that goes away passes on.
        """
        h = Harness(upload_slots=1)
        h.download(have=ALL)
        a, _ = h.s.accept(h.hs(1))
        b, _ = h.s.accept(h.hs(2))
        c, _ = h.s.accept(h.hs(3))
        self.assertEqual(h.s.message(a, PieceRequest(0)), [SendPiece(a, H, 0)])
        self.assertEqual(h.s.message(a, PieceRequest(1)), [])
        self.assertEqual(h.s.message(b, PieceRequest(2)), [])
        self.assertEqual(h.s.message(c, PieceRequest(3)), [])
        self.assertEqual(h.s.piece_sent(a, 0), [SendPiece(b, H, 2)])
        self.assertEqual(h.s.conn_lost(b), [SendPiece(c, H, 3)])
        self.assertEqual(h.s.piece_sent(c, 3), [SendPiece(a, H, 1)])
        self.assertEqual(h.s.piece_sent(a, 1), [])
        # Without a limit every connection sends at once.
        h = Harness()
        h.download(have=ALL)
        a, _ = h.s.accept(h.hs(1))
        b, _ = h.s.accept(h.hs(2))
        self.assertEqual(h.s.message(a, PieceRequest(0)), [SendPiece(a, H, 0)])
        self.assertEqual(h.s.message(b, PieceRequest(1)), [SendPiece(b, H, 1)])

    def test_timeout_scales_with_piece_size(self) -> None:
        """max(4 s, 4 s per MiB)."""
        c = EngineConfig()
        self.assertEqual(c.request_timeout(256 * 1024), 4.0)
        self.assertEqual(c.request_timeout(8 * 1024 * 1024), 32.0)

    def test_announce_only_to_peers_lacking_the_piece(self) -> None:
        """A written piece is announced to each peer that lacks it, as far as we know."""
        h = Harness()
        h.download(have=())
        a, actions = h.connect(1, ALL)
        index = requests(actions, a)[0]
        b, _ = h.connect(2, [index])  # had it at the handshake
        c, _ = h.connect(3, [])  # lacks it
        d, _ = h.connect(4, [])
        h.s.message(d, AnnouncePiece(index))  # got it since
        sent = [(x.conn, x.message) for x in h.deliver(a, index) if isinstance(x, Send)]
        self.assertIn((c, AnnouncePiece(index)), sent)
        for has_it in (a, b, d):
            self.assertNotIn((has_it, AnnouncePiece(index)), sent)

    def test_endgame_duplicates_and_cancels(self) -> None:
        """With <= 3 pieces missing a piece goes to several peers; the losers get CANCEL."""
        h = Harness()
        h.download(have=range(PIECES - 1))
        a, actions = h.connect(1, ALL)
        b, actions2 = h.connect(2, ALL)
        self.assertEqual(requests(actions + actions2), [7, 7])
        done = h.deliver(a, 7)
        self.assertIn(Send(b, CancelPiece(7)), done)
        # b has every piece: it is not told that we have one now.
        self.assertNotIn(Send(b, AnnouncePiece(7)), done)
        # b's copy arriving after the cancel is read and dropped, not a violation.
        verdict, _ = h.s.payload_start(b, 7, 1024)
        self.assertEqual(verdict, PayloadVerdict.DISCARD)
        self.assertIn(b, h.s.conns)

    def test_bad_payloads_close_and_blacklist(self) -> None:
        """Out-of-range, wrong length and unrequested payloads close and blacklist the peer."""
        for case in ("out of range", "wrong length", "unrequested"):
            h = Harness(pipeline_limit=1)
            h.download()
            conn, actions = h.connect(1, [0, 6])
            (asked,) = requests(actions)
            other = 6 if asked == 0 else 0
            index, length = {
                "out of range": (99, 1024),
                "wrong length": (asked, 1000),
                "unrequested": (other, 1024),
            }[case]
            verdict, actions = h.s.payload_start(conn, index, length)
            self.assertEqual(verdict, PayloadVerdict.REJECT)
            self.assertTrue(any(isinstance(a, Close) and a.blacklisted for a in actions))
            self.assertTrue(h.s.is_blacklisted(H, pid(1)))

    def test_hash_failure_rerequests_elsewhere(self) -> None:
        """A piece failing its hash closes its sender and goes to another peer."""
        h = Harness(pipeline_limit=1)
        h.download()
        bad, actions = h.connect(1, [2])
        good, _ = h.connect(2, [2])
        h.s.payload_start(bad, 2, 1024)
        h.s.payload_end(bad, 2)
        actions = h.s.piece_failed(bad, H, 2, bad_data=True, reason="sha256")
        self.assertIn(Close(bad, "piece 2: sha256", blacklisted=True), actions)
        self.assertEqual(requests(actions, good), [2])

    def test_serving(self) -> None:
        """Requests are served one at a time; unknown pieces get ERROR; out of range closes."""
        h = Harness()
        h.download(have=[0, 1])
        conn, _ = h.s.accept(h.hs(1))
        self.assertEqual(h.s.message(conn, PieceRequest(0)), [SendPiece(conn, H, 0)])
        self.assertEqual(h.s.message(conn, PieceRequest(1)), [])
        unavailable = h.s.message(conn, PieceRequest(5))
        self.assertIsInstance(unavailable[0].message, Error)
        self.assertEqual(h.s.piece_sent(conn, 0), [SendPiece(conn, H, 1)])
        self.assertEqual(
            h.s.message(conn, PieceRequest(100)),
            [Close(conn, "request for piece 100 out of range", blacklisted=True)],
        )

    def test_origin_sends_each_piece_once_per_window(self) -> None:
        """
        An origin answers a second peer's request for a piece it accepted from another peer
        less than origin_spread_window ago with ERROR(SENT_ELSEWHERE); the first peer may
        ask again, and after the window anyone is served.
        """
        h = Harness(origin=True, announce=False, origin_spread_window=5.0)
        h.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
        first, _ = h.s.accept(h.hs(1))
        second, _ = h.s.accept(h.hs(2))
        self.assertEqual(h.s.message(first, PieceRequest(3)), [SendPiece(first, H, 3)])
        (refusal,) = h.s.message(second, PieceRequest(3))
        self.assertEqual(refusal.conn, second)
        self.assertEqual(refusal.message.index, 3)
        self.assertEqual(refusal.message.code, ErrorCode.SENT_ELSEWHERE)
        self.assertEqual(h.s.message(second, PieceRequest(4)), [SendPiece(second, H, 4)])
        h.s.piece_sent(first, 3)
        self.assertEqual(h.s.message(first, PieceRequest(3)), [SendPiece(first, H, 3)])
        h.t = 5.5
        h.s.piece_sent(second, 4)
        self.assertEqual(h.s.message(second, PieceRequest(3)), [SendPiece(second, H, 3)])

    def test_agents_serve_duplicates(self) -> None:
        """The spread window is an origin's: an agent serves the same piece to everyone."""
        h = Harness(origin_spread_window=5.0)
        h.download(have=[0])
        one, _ = h.s.accept(h.hs(1))
        two, _ = h.s.accept(h.hs(2))
        self.assertEqual(h.s.message(one, PieceRequest(0)), [SendPiece(one, H, 0)])
        self.assertEqual(h.s.message(two, PieceRequest(0)), [SendPiece(two, H, 0)])

    def test_sent_elsewhere_goes_to_an_agent(self) -> None:
        """ERROR(SENT_ELSEWHERE) from an origin: the piece is asked of an agent that has it."""
        h = Harness(pipeline_limit=1, origin_fallback_below=None)
        h.download()
        (dial,) = h.s.announce_result(H, [peer(1, origin=True)], 3.0)
        origin = dial.conn
        actions = h.s.dial_succeeded(origin, h.hs(1, ALL, origin=True))
        (asked,) = requests(actions, origin)
        agent, _ = h.connect(2, [])
        actions = h.s.message(origin, Error(asked, ErrorCode.SENT_ELSEWHERE, "sent to a peer"))
        self.assertNotIn(asked, requests(actions, origin))
        actions = h.s.message(agent, AnnouncePiece(asked))
        self.assertEqual(requests(actions, agent), [asked])

    def test_sent_elsewhere_retried_after_the_window(self) -> None:
        """
        A piece an origin refused with SENT_ELSEWHERE is asked of it again once the spread
        window (not the 30 s failure blacklist) has passed, if no agent brought it meanwhile.
        """
        h = Harness(origin_fallback_below=None, origin_spread_window=10.0)
        h.download(have=[i for i in ALL if i != 5])
        (dial,) = h.s.announce_result(H, [peer(1, origin=True)], 3.0)
        actions = h.s.dial_succeeded(dial.conn, h.hs(1, ALL, origin=True))
        self.assertEqual(requests(actions, dial.conn), [5])
        actions = h.s.message(dial.conn, Error(5, ErrorCode.SENT_ELSEWHERE, "sent to a peer"))
        self.assertEqual(requests(actions), [])
        h.t = 9.0
        self.assertEqual(requests(h.s.tick()), [])
        h.t = 10.5
        self.assertEqual(requests(h.s.tick(), dial.conn), [5])


class OriginHomeTests(SynchronousTestCase):
    """Several origins: each is asked for its own share of the pieces first."""

    def test_each_origin_asked_for_its_home_pieces(self) -> None:
        """
        With two origins handed out, the first (by peer id) is asked only for the even
        pieces and the second only for the odd ones, although each has every piece.
        """
        h = Harness(origin_pipeline_limit=8, pipeline_limit=2)
        h.download()
        first, second = h.s.announce_result(H, [peer(1, True), peer(2, True)], 3.0)
        asked = requests(h.s.dial_succeeded(first.conn, h.hs(1, ALL, origin=True)))
        self.assertEqual(sorted(asked), [0, 2, 4, 6])
        asked = requests(h.s.dial_succeeded(second.conn, h.hs(2, ALL, origin=True)))
        self.assertEqual(sorted(asked), [1, 3, 5, 7])

    def test_other_origins_pieces_after_the_spread_window(self) -> None:
        """
        An origin that is down does not hold its pieces back: once origin_spread_window has
        passed since the download began, the origin we reach is asked for them too, on the
        tick, with nothing else happening.
        """
        h = Harness(origin_pipeline_limit=8, pipeline_limit=2, origin_spread_window=10.0)
        h.download()
        up, down = h.s.announce_result(H, [peer(1, True), peer(2, True)], 3.0)
        h.s.dial_failed(down.conn)
        asked = requests(h.s.dial_succeeded(up.conn, h.hs(1, ALL, origin=True)))
        self.assertEqual(sorted(asked), [0, 2, 4, 6])
        for index in asked:
            self.assertEqual(requests(h.deliver(up.conn, index)), [])
        h.t = 9.0
        self.assertEqual(requests(h.s.tick()), [])
        h.t = 10.0
        self.assertEqual(sorted(requests(h.s.tick(), up.conn)), [1, 3, 5, 7])

    def test_one_origin_is_asked_for_anything(self) -> None:
        """A blob with one origin: no shares, the origin is asked for every piece at once."""
        h = Harness(origin_pipeline_limit=8, pipeline_limit=2)
        h.download()
        (dial,) = h.s.announce_result(H, [peer(1, True)], 3.0)
        asked = requests(h.s.dial_succeeded(dial.conn, h.hs(1, ALL, origin=True)))
        self.assertEqual(sorted(asked), list(ALL))


class LifecycleTests(SynchronousTestCase):
    """Shared downloads, TTIs, announces."""

    def test_concurrent_requests_share_one_download(self) -> None:
        """A second request for the same blob joins the first; both complete once."""
        h = Harness()
        first = h.download()
        second = h.s.add_torrent(META, "ns", Bitfield(PIECES), waiter=h.results.append)
        self.assertEqual(len(first), 1)
        self.assertEqual(second, [])
        self.assertEqual(len(h.s.torrents), 1)
        self.assertEqual(len(h.s.torrents[H].waiters), 2)

    def test_leecher_tti_fails_waiters(self) -> None:
        """No piece written for 5 min: the download fails and the torrent is dropped."""
        h = Harness()
        h.download()
        h.t = 299
        h.s.tick()
        self.assertEqual(h.results, [])
        h.t = 300
        self.assertIn(TorrentDropped(H, False), h.s.tick())
        self.assertIsInstance(h.results[0], DownloadFailed)

    def test_seeder_tti_counts_real_reads(self) -> None:
        """A seeder serving pieces stays; 5 min after its last read it is dropped but announced."""
        h = Harness()
        h.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
        conn, _ = h.s.accept(h.hs(1))
        h.t = 250
        h.s.message(conn, PieceRequest(0))
        h.s.piece_sent(conn, 0)
        h.t = 400
        for a in h.s.tick():
            if isinstance(a, Announce):
                h.s.announce_result(H, [], 3.0)
        self.assertTrue(h.s.has_torrent(H))
        h.t = 551
        actions = h.s.tick()
        self.assertIn(TorrentDropped(H, True), actions)
        self.assertFalse(h.s.has_torrent(H))
        if Announce(H, META.digest, "ns", True) in actions:
            h.s.announce_result(H, [], 3.0)
        h.t = 700
        self.assertIn(Announce(H, META.digest, "ns", True), h.s.tick())

    def test_announce_round_robin_and_complete_interval(self) -> None:
        """One announce per interval, round robin; complete torrents every 30 s."""
        h = Harness()
        other = MetaInfo.of_bytes(b"y" * 100, 64)
        h.s.add_torrent(META, "ns", Bitfield(PIECES, full=True), complete=True)
        h.s.add_torrent(other, "ns", Bitfield(other.num_pieces))  # announces at once
        h.s.announce_result(other.infohash, [], 3.0)
        seen = []
        for step in range(40):
            h.t = step * 1.0
            for a in h.s.tick():
                if isinstance(a, Announce):
                    seen.append((h.t, a.infohash == H))
                    h.s.announce_result(a.infohash, [], 3.0)
        complete_times = [t for t, c in seen if c]
        self.assertEqual(complete_times[:2], [0.0, 30.0])
        incomplete = [t for t, c in seen if not c]
        self.assertGreater(len(incomplete), 8)
        self.assertTrue(all(b - a >= 3.0 for a, b in itertools.pairwise(incomplete)))


class BandwidthTests(SynchronousTestCase):
    """Token buckets."""

    def test_bucket_delays(self) -> None:
        """With 100 KB/s and a 100 KB burst, the second 100 KB waits 1 s; refills over time."""
        t = [0.0]
        b = TokenBucket(100_000, lambda: t[0], 100_000)
        self.assertEqual(b.reserve(100_000), 0.0)
        self.assertAlmostEqual(b.reserve(50_000), 0.5)
        t[0] = 2.0
        self.assertEqual(b.reserve(10_000), 0.0)

    def test_chunks_scale_with_the_rate(self) -> None:
        """
        A chunk is ~10 ms of the rate within 16 KiB..1 MiB; a direction without a bucket
        moves the caller's unlimited chunk.
        """
        now = lambda: 0.0  # noqa: E731
        self.assertEqual(TokenBucket(100_000, now).chunk, 16 * 1024)
        self.assertEqual(TokenBucket(20_000_000, now).chunk, 200_000)
        self.assertEqual(TokenBucket(300 * 1024 * 1024, now).chunk, 1024 * 1024)
        limiter = BandwidthLimiter.of(now, None, 20_000_000)
        self.assertEqual(limiter.receive_chunk(5), 200_000)
        self.assertEqual(limiter.send_chunk(5), 5)
        # The default burst is a second's worth, and at least a chunk.
        self.assertEqual(TokenBucket(100, now).burst, 16 * 1024)

    def test_unlimited(self) -> None:
        """No buckets: never a delay."""
        limiter = BandwidthLimiter()
        self.assertIsNone(limiter.egress)
        self.assertIsNone(limiter.ingress)
        self.assertEqual(limiter.send_delay(10**9), 0.0)
        self.assertEqual(limiter.receive_delay(10**9), 0.0)
