"""The peer protocol: in-memory swarms (iosim), bad input, and the reactor-thread rule."""

from __future__ import annotations

import os
import random
from errno import EIO, ENOSPC
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, MetaInfo, PeerID, PeerInfo
from kraken.io import run_inline
from kraken.protocols.peer import (
    BufferPool,
    ConnectionState,
    PeerNode,
    PeerProtocol,
)
from kraken.torrent.actions import Close, Dial, EngineConfig, Send
from kraken.torrent.archive import MemoryArchive, MemoryPieceStorage
from kraken.torrent.bandwidth import BandwidthLimiter
from kraken.torrent.messages import (
    MAX_FRAME,
    AnnouncePiece,
    Handshake,
    PiecePayload,
    PieceRequest,
)
from kraken.torrent.scheduler import DownloadFailed, LocalStorageError, Scheduler

from .swarm import Swarm, SwarmNode

KiB = 1024
MiB = 1024 * KiB


def blob(size: int, seed: int = 0) -> tuple[bytes, MetaInfo]:
    """Random bytes and their metainfo in 256 KiB pieces."""
    data = random.Random(seed).randbytes(size)
    return data, MetaInfo.of_bytes(data, 256 * KiB)


def start(swarm: Swarm, leechers: list[SwarmNode], meta: MetaInfo) -> dict[int, Any]:
    """Every leecher downloads; results by port."""
    results: dict[int, Any] = {}
    for node in leechers:
        swarm.register(node, meta)
        node.node.download("ns", meta).addBoth(
            lambda r, port=node.port: results.__setitem__(port, r)
        )
    return results


class CorruptStorage(MemoryPieceStorage):
    """Serves pieces with one byte flipped."""

    def read_piece(self, index: int) -> bytes:
        """The piece, damaged."""
        data = bytearray(super().read_piece(index))
        data[0] ^= 0xFF
        return bytes(data)


def piece_bytes(node: SwarmNode, direction: str) -> float:
    """``kraken_p2p_piece_bytes_total{direction}`` of a swarm node."""
    value = node.node.metrics.registry.get_sample_value(
        "kraken_p2p_piece_bytes_total", {"direction": direction}
    )
    return value or 0.0


def failed_pieces(node: SwarmNode, reason: str) -> float:
    """``kraken_p2p_pieces_failed_total{reason}`` of a swarm node."""
    value = node.node.metrics.registry.get_sample_value(
        "kraken_p2p_pieces_failed_total", {"reason": reason}
    )
    return value or 0.0


class SwarmTests(SynchronousTestCase):
    """Whole swarms in memory on a fake clock."""

    def assert_all_done(self, results, leechers, data, meta) -> None:
        """Every leecher finished with the exact bytes."""
        self.assertEqual(len(results), len(leechers))
        for node in leechers:
            self.assertIsInstance(results[node.port], MemoryPieceStorage, results[node.port])
            self.assertEqual(node.archive.torrents[meta.digest].content(), data)

    def test_one_seeder_twenty_leechers(self) -> None:
        """1 origin + 20 agents, 32 MiB: all finish identical; agents served each other."""
        data, meta = blob(32 * MiB)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        storage = origin.archive.seed(meta, data)
        leechers = [swarm.add() for _ in range(20)]
        results = start(swarm, leechers, meta)
        swarm.run(lambda: len(results) == 20)
        self.assert_all_done(results, leechers, data, meta)
        # P2P: the origin served far fewer than 20 copies.
        self.assertLess(storage.reads, 20 * meta.num_pieces)
        # The metrics count every piece byte once where it was written and where it was sent
        # (an endgame duplicate is sent, and dropped unwritten).
        received = [piece_bytes(n, "received") for n in leechers]
        self.assertEqual(received, [meta.length] * 20)
        sent = sum(piece_bytes(n, "sent") for n in [origin, *leechers])
        self.assertGreaterEqual(sent, 20 * meta.length)
        self.assertEqual(piece_bytes(origin, "sent"), storage.reads * meta.piece_length)
        self.assertEqual(failed_pieces(leechers[0], "hash"), 0)

    def test_corrupt_peer(self) -> None:
        """A peer serving corrupt pieces is blacklisted; everyone still gets the right bytes."""
        data, meta = blob(4 * MiB, 1)
        swarm = Swarm()
        good = swarm.add(origin=True)
        good.archive.seed(meta, data)
        bad = swarm.add(origin=True)
        bad.archive.torrents[meta.digest] = CorruptStorage(meta, data)
        leechers = [swarm.add() for _ in range(3)]
        results = start(swarm, leechers, meta)
        swarm.run(lambda: len(results) == 3)
        self.assert_all_done(results, leechers, data, meta)
        self.assertGreater(bad.archive.torrents[meta.digest].reads, 0)
        for node in leechers:
            # Nothing corrupt was written: each piece was written exactly once.
            self.assertEqual(node.archive.torrents[meta.digest].writes, meta.num_pieces)
        # Each corrupt piece that arrived was counted as a hash failure.
        self.assertGreater(sum(failed_pieces(n, "hash") for n in leechers), 0)
        self.assertEqual([piece_bytes(n, "received") for n in leechers], [meta.length] * 3)

    def test_stalling_peer(self) -> None:
        """A peer that never answers requests: they time out and go to the good peer."""
        data, meta = blob(4 * MiB, 2)
        swarm = Swarm()
        stall = swarm.add(origin=True)
        stall.archive.seed(meta, data)
        stall.node.run_blocking = lambda f, *a: (
            Deferred() if f.__name__ == "read_piece" else (run_inline(f, *a))
        )
        good = swarm.add(origin=True)
        good.archive.seed(meta, data)
        (_leecher,) = leechers = [swarm.add()]
        results = start(swarm, leechers, meta)
        swarm.run(lambda: len(results) == 1, max_seconds=120)
        self.assert_all_done(results, leechers, data, meta)
        self.assertLess(swarm.clock.seconds(), 60)

    def test_peer_vanishing_mid_payload(self) -> None:
        """A peer dropping the connection inside a payload: nothing written from it, retried."""
        data, meta = blob(2 * MiB, 3)
        swarm = Swarm()
        quitter = swarm.add(origin=True)
        quitter.archive.seed(meta, data)

        def half_then_vanish(self: PeerProtocol, index: int, piece: bytes) -> None:
            self.write_frame(PiecePayload(index, len(piece)).encode())
            self.raw_transport().write(piece[: len(piece) // 2])
            self.raw_transport().abortConnection()

        quitter.node.factory = lambda: _Factory(quitter.node, half_then_vanish)  # type: ignore
        good = swarm.add(origin=True)
        good.archive.seed(meta, data)
        (leecher,) = leechers = [swarm.add()]
        results = start(swarm, leechers, meta)
        swarm.run(lambda: len(results) == 1, max_seconds=120)
        self.assert_all_done(results, leechers, data, meta)
        self.assertEqual(leecher.archive.torrents[meta.digest].writes, meta.num_pieces)

    def test_leecher_restart_resumes(self) -> None:
        """A leecher stopped mid-download restarts over its archive and fetches only the rest."""
        data, meta = blob(8 * MiB, 4)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        leecher = swarm.add()
        results = start(swarm, [leecher], meta)
        swarm.run(lambda: leecher.archive.torrents[meta.digest].bitfield().count() >= 8)
        stored = leecher.archive.torrents[meta.digest].bitfield().count()
        self.assertLess(stored, meta.num_pieces)
        leecher.stop()
        swarm.pump()
        self.assertEqual(len(results), 1)  # the first download failed on shutdown
        leecher.start()
        results.clear()
        results = start(swarm, [leecher], meta)
        swarm.run(lambda: len(results) == 1)
        self.assert_all_done(results, [leecher], data, meta)
        # Every piece written exactly once: verified pieces were not fetched again.
        self.assertEqual(leecher.archive.torrents[meta.digest].writes, meta.num_pieces)


class FillingDisk(MemoryPieceStorage):
    """Storage whose disk fills up after ``space`` pieces: later writes raise ``errno``."""

    def __init__(self, metainfo: MetaInfo, space: int, errno: int = ENOSPC) -> None:
        super().__init__(metainfo)
        self.space = space
        self.errno = errno
        self.refused = 0

    def write_piece(self, index: int, data: Any) -> None:
        """Write while there is space, else fail as the kernel would."""
        if self.space <= 0:
            self.refused += 1
            raise OSError(self.errno, os.strerror(self.errno))
        self.space -= 1
        super().write_piece(index, data)


class LocalFaultTests(SynchronousTestCase):
    """A piece the leecher cannot store is its own fault: the download ends, nobody is blamed."""

    def full_disk(self, errno: int) -> None:
        """A leecher whose writes fail with ``errno`` after 5 pieces, beside two seeders."""
        data, meta = blob(4 * MiB, 9)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        helper = swarm.add()
        helper.archive.seed(meta, data)
        leecher = swarm.add()
        disk = FillingDisk(meta, space=5, errno=errno)
        leecher.archive.torrents[meta.digest] = disk
        swarm.register(helper, meta)
        results = start(swarm, [leecher], meta)
        swarm.run(lambda: bool(results), max_seconds=30, step=0.1)
        failure = results[leecher.port]
        self.assertIsInstance(failure, Failure)
        error = failure.value
        self.assertIsInstance(error, LocalStorageError)
        self.assertIsInstance(error, OSError)
        self.assertEqual(error.errno, errno)
        self.assertIn(str(meta.digest), str(error))
        # At once, and after the first refused write: no piece was retried elsewhere.
        self.assertLess(swarm.clock.seconds(), 2.0)
        self.assertEqual(disk.refused, 1)
        # Nobody was blamed, and the leecher let go of the torrent and its connections.
        self.assertEqual(leecher.scheduler.blacklist, {})
        self.assertEqual(origin.scheduler.blacklist, {})
        self.assertEqual(helper.scheduler.blacklist, {})
        self.assertFalse(leecher.scheduler.has_torrent(meta.infohash))
        self.assertEqual(leecher.node.protocols, {})
        # Space is back: a new pull resumes and fetches only the pieces that were missing.
        disk.space = meta.num_pieces
        results.clear()
        results = start(swarm, [leecher], meta)
        swarm.run(lambda: bool(results), step=0.1)
        self.assertIsInstance(results[leecher.port], MemoryPieceStorage, results[leecher.port])
        self.assertEqual(disk.content(), data)
        self.assertEqual(disk.writes, meta.num_pieces)

    def test_disk_full_ends_the_download(self) -> None:
        """ENOSPC on a piece write ends the download at once with the OSError; a pull resumes."""
        self.full_disk(ENOSPC)

    def test_io_error_ends_the_download(self) -> None:
        """EIO on a piece write: the same (the disk, not the peer, is at fault)."""
        self.full_disk(EIO)


class Squatter(Int32StringReceiver):
    """An attacker's connection: a leecher handshake, then silence; reconnects when dropped."""

    def __init__(self, attack: SlotAttack, ip: str, port: int) -> None:
        self.attack = attack
        self.ip = ip
        self.port = port

    def connectionMade(self) -> None:
        """Send a handshake with a fresh peer id, as a new leecher would."""
        meta = self.attack.meta
        hello = Handshake(
            PeerID.random(), meta.infohash, meta.digest, "ns", Bitfield(meta.num_pieces)
        )
        self.sendString(hello.encode())
        self.attack.live.add(self)

    def stringReceived(self, string: bytes) -> None:
        """Ignore whatever the seeder says."""

    def connectionLost(self, reason: Any = None) -> None:
        """Dropped (refused, evicted, timed out): come back a moment later."""
        self.attack.live.discard(self)
        self.attack.dropped += 1
        if self.attack.running:
            self.attack.swarm.clock.callLater(0.05, self.attack.connect, self.ip, self.port)


class SlotAttack:
    """Squatters from the given addresses holding a seeder's peer port (issue 18, case 1)."""

    def __init__(self, swarm: Swarm, target: SwarmNode, meta: MetaInfo) -> None:
        self.swarm = swarm
        self.target = target
        self.meta = meta
        self.running = True
        self.live: set[Squatter] = set()
        self.dropped = 0

    def connect(self, ip: str, port: int) -> None:
        """One squatter connection from ``ip:port``."""
        if not self.running:
            return
        server = self.target.node.factory().buildProtocol(None)
        client = Squatter(self, ip, port)
        self.swarm.pumps.append(
            iosim.connect(
                server,
                iosim.FakeTransport(server, True, peerAddress=IPv4Address("TCP", ip, port)),
                client,
                iosim.makeFakeClient(client),
                greet=False,
                clock=self.swarm.clock,
            )
        )


class SlotSquattingTests(SynchronousTestCase):
    """Issue 18, case 1: connections that hold a slot and send nothing cannot stop a pull."""

    def pull(self, squatters: list[str], holding: int = 0) -> float:
        """
        Seconds a leecher takes to pull 4 MiB from an origin attacked from ``squatters``
        (which hold ``holding`` of its slots when the pull starts).
        """
        data, meta = blob(4 * MiB, 11)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        attack = SlotAttack(swarm, origin, meta)
        for i, ip in enumerate(squatters):
            attack.connect(ip, 40000 + i)
        swarm.run(lambda: False, max_seconds=3.0, step=0.1)
        self.assertEqual(len(origin.scheduler.conns), holding)
        began = swarm.clock.seconds()
        leecher = swarm.add()
        results = start(swarm, [leecher], meta)
        swarm.run(lambda: bool(results), max_seconds=90.0, step=0.1)
        took = swarm.clock.seconds() - began
        attack.running = False
        self.assert_pulled(results, leecher, data, meta)
        return took

    def assert_pulled(
        self, results: dict[int, Any], leecher: SwarmNode, data: bytes, meta: MetaInfo
    ) -> None:
        """The leecher has the exact bytes."""
        self.assertIsInstance(results.get(leecher.port), MemoryPieceStorage, repr(results))
        self.assertEqual(leecher.archive.torrents[meta.digest].content(), data)

    def test_one_host_twelve_connections(self) -> None:
        """
        12 squatters from one address (reconnecting when dropped) hold 2 of the origin's 10
        slots, not all of them: a pull completes within twice its unattacked time.
        """
        alone = self.pull([])
        attacked = self.pull(["10.9.9.9"] * 12, holding=2)
        self.assertLessEqual(attacked, 2 * alone + 0.1)

    def test_ten_hosts_that_send_nothing(self) -> None:
        """
        Squatters from 10 addresses fill every slot; the leecher, arriving after they have
        had a second to show their worth, takes one's slot, and its pull completes within
        twice its unattacked time while the evicted squatter keeps coming back.
        """
        alone = self.pull([])
        attacked = self.pull([f"10.9.9.{i}" for i in range(10)], holding=10)
        self.assertLessEqual(attacked, 2 * alone + 0.1)


class _Factory:
    """A factory whose protocols stream pieces through a custom function."""

    def __init__(self, node: PeerNode, stream: Any) -> None:
        self.node = node
        self.stream = stream

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        """A protocol with the replaced ``_stream``."""
        proto = PeerProtocol(self.node)
        proto._stream = lambda index, data: self.stream(proto, index, data)  # type: ignore
        return proto


class OneConnection(SynchronousTestCase):
    """One dialled connection on a StringTransport (helpers, no tests)."""

    def setUp(self) -> None:
        self.data, self.meta = blob(1 * MiB, 5)
        self.clock = Clock()
        self.archive = MemoryArchive()
        self.scheduler = Scheduler(
            PeerID("e" * 40), self.clock.seconds, random.Random(0), EngineConfig()
        )
        self.node = PeerNode(self.clock, self.scheduler, self.archive, run_inline)
        self.node.download("ns", self.meta)
        self.remote = PeerID("1" * 40)
        (dial,) = self.scheduler.announce_result(
            self.meta.infohash, [PeerInfo(self.remote, "10.0.0.3", 9)], 3.0
        )
        assert isinstance(dial, Dial)
        self.proto = PeerProtocol(self.node, dial)
        self.node.protocols[dial.conn] = self.proto
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def frame(self, body: bytes) -> bytes:
        """A length-prefixed frame."""
        return len(body).to_bytes(4, "big") + body

    def handshake(self) -> None:
        """The remote answers with a full bitfield: we request pieces."""
        hs = Handshake(
            self.remote,
            self.meta.infohash,
            self.meta.digest,
            "ns",
            self.scheduler.torrents[self.meta.infohash].dispatcher.have.copy(),
        )
        for i in range(self.meta.num_pieces):
            hs.bitfield.set(i)
        self.transport.clear()
        self.proto.dataReceived(self.frame(hs.encode()))
        self.assertTrue(self.transport.value())  # requests went out

    def assert_dropped(self) -> None:
        """Connection aborted, peer blacklisted, nothing written."""
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.scheduler.is_blacklisted(self.meta.infohash, self.remote))
        self.assertEqual(self.archive.torrents[self.meta.digest].writes, 0)
        self.assertEqual(self.node.protocols, {})


class BadInputTests(OneConnection):
    """One dialled connection fed hostile bytes through a StringTransport."""

    def test_oversized_frame(self) -> None:
        """A frame longer than MAX_FRAME is refused before it is buffered."""
        self.handshake()
        self.proto.dataReceived((MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
        self.assert_dropped()

    def test_malformed_and_unknown_frames(self) -> None:
        """A truncated message or an unknown type closes the connection."""
        for body in (b"\x01\x00", b"\x09"):
            self.setUp()
            self.handshake()
            self.proto.dataReceived(self.frame(body))
            self.assert_dropped()

    def test_bad_handshake(self) -> None:
        """A handshake from someone else than the tracker said closes and blacklists."""
        hs = Handshake(
            PeerID("2" * 40),
            self.meta.infohash,
            self.meta.digest,
            "ns",
            self.scheduler.torrents[self.meta.infohash].dispatcher.have.copy(),
        )
        self.proto.dataReceived(self.frame(hs.encode()))
        self.assert_dropped()

    def test_message_before_handshake(self) -> None:
        """Anything but a handshake first is a violation."""
        self.proto.dataReceived(self.frame(PieceRequest(0).encode()))
        self.assert_dropped()

    def test_handshake_timeout(self) -> None:
        """No handshake within 5 s: closed and blacklisted."""
        self.clock.advance(5)
        self.assert_dropped()

    def test_index_out_of_range(self) -> None:
        """ANNOUNCE_PIECE of a piece that does not exist closes the connection."""
        self.handshake()
        self.proto.dataReceived(self.frame(AnnouncePiece(self.meta.num_pieces).encode()))
        self.assert_dropped()

    def test_unrequested_payload(self) -> None:
        """A payload we did not ask for is refused before its bytes are buffered."""
        self.handshake()
        pending = self.scheduler.torrents[self.meta.infohash].dispatcher
        index = next(i for i in range(self.meta.num_pieces) if not pending.requested.get(i))
        self.proto.dataReceived(self.frame(PiecePayload(index, 256 * KiB).encode()) + b"x" * 10)
        self.assert_dropped()

    def test_hash_failure(self) -> None:
        """A requested piece with wrong bytes: dropped, blacklisted, nothing written."""
        self.handshake()
        index = min(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)
        self.proto.dataReceived(self.frame(PiecePayload(index, 256 * KiB).encode()))
        self.proto.dataReceived(b"\x00" * (256 * KiB))
        self.assert_dropped()
        self.assertNotIn(index, self.scheduler.torrents[self.meta.infohash].dispatcher.have)
        registry = self.node.metrics.registry
        failed = registry.get_sample_value("kraken_p2p_pieces_failed_total", {"reason": "hash"})
        self.assertEqual(failed, 1)
        got = registry.get_sample_value("kraken_p2p_piece_bytes_total", {"direction": "received"})
        self.assertEqual(got, 0)

    def test_payload_in_pieces_then_good(self) -> None:
        """A good piece split across many reads is assembled, verified and written once."""
        self.handshake()
        index = min(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)
        piece = self.data[index * 256 * KiB : (index + 1) * 256 * KiB]
        wire = self.frame(PiecePayload(index, len(piece)).encode()) + piece
        for i in range(0, len(wire), 1000):
            self.proto.dataReceived(wire[i : i + 1000])
        self.assertEqual(self.archive.torrents[self.meta.digest].writes, 1)
        self.assertFalse(self.transport.disconnecting)
        self.assertIn(index, self.scheduler.torrents[self.meta.infohash].dispatcher.have)


class CountingTransport(StringTransport):
    """A StringTransport that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Record, then buffer."""
        self.writes.append(bytes(data))
        super().write(data)


class CorkTests(OneConnection):
    """The frames one run of the engine's actions sends a connection leave in one write."""

    def test_one_write_per_run(self) -> None:
        """Two announces and a request in one ``run``: one write, frames in order."""
        self.handshake()
        conn = self.proto.conn
        assert conn is not None
        transport = CountingTransport()
        self.proto.transport = transport
        self.node.run(
            [
                Send(conn, AnnouncePiece(1)),
                Send(conn, AnnouncePiece(2)),
                Send(conn, PieceRequest(3)),
            ]
        )
        self.assertEqual(
            transport.writes,
            [
                self.frame(AnnouncePiece(1).encode())
                + self.frame(AnnouncePiece(2).encode())
                + self.frame(PieceRequest(3).encode())
            ],
        )
        # Outside a run a frame is written at once.
        self.proto.send_message(AnnouncePiece(4))
        self.assertEqual(transport.writes[-1], self.frame(AnnouncePiece(4).encode()))

    def test_close_sends_what_the_run_held(self) -> None:
        """A graceful close in the same run still sends the frames before it."""
        self.handshake()
        conn = self.proto.conn
        assert conn is not None
        self.transport.clear()
        self.node.run([Send(conn, AnnouncePiece(1)), Close(conn, "done")])
        self.assertEqual(self.transport.value(), self.frame(AnnouncePiece(1).encode()))
        self.assertTrue(self.transport.disconnecting)


class PausingTransport(StringTransport):
    """A StringTransport that pauses its streaming producer above ``limit`` buffered bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes) -> None:
        """Buffer, then apply back-pressure like a TCP transport with a full buffer."""
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.limit:
            self.producer.pauseProducing()


class HeldFramesTests(SynchronousTestCase):
    """Control frames written while a piece streams go after the piece, not inside it."""

    def test_frame_during_paused_piece(self) -> None:
        """A frame sent while the piece sender is paused follows the piece's last byte."""
        data = random.Random(3).randbytes(4 * MiB)
        meta = MetaInfo.of_bytes(data, 2 * MiB)
        clock = Clock()
        archive = MemoryArchive()
        archive.seed(meta, data)
        scheduler = Scheduler(
            PeerID("a" * 40),
            clock.seconds,
            random.Random(0),
            EngineConfig(origin=True, announce=False),
        )
        node = PeerNode(clock, scheduler, archive, run_inline)
        proto = PeerProtocol(node)
        transport = PausingTransport(64 * KiB)
        proto.makeConnection(transport)
        remote = Handshake(PeerID("b" * 40), meta.infohash, meta.digest, "ns", Bitfield(2))
        frame = lambda body: len(body).to_bytes(4, "big") + body  # noqa: E731
        proto.dataReceived(frame(remote.encode()))
        self.assertEqual(proto.state, ConnectionState.ACTIVE)
        transport.clear()
        proto.dataReceived(frame(PieceRequest(1).encode()))
        self.assertIsNotNone(transport.producer)  # paused mid-piece
        sent_so_far = transport.value()
        self.assertLess(len(sent_so_far), 2 * MiB)
        proto.send_message(AnnouncePiece(0))
        self.assertEqual(transport.value(), sent_so_far)  # held back
        while transport.producer is not None:
            transport.producer.resumeProducing()
        header = frame(PiecePayload(1, 2 * MiB).encode())
        self.assertEqual(
            transport.value(), header + data[2 * MiB :] + frame(AnnouncePiece(0).encode())
        )


class _UncommittableStorage(MemoryPieceStorage):
    """Every piece stored, but the commit fails (the disk went away)."""

    def commit(self) -> None:
        """Fail."""
        raise OSError(EIO, "disk gone")


class _HoldFirstCall:
    """A run_blocking that holds its first call (opening the storage) and runs the rest now."""

    def __init__(self) -> None:
        self.held: list[tuple[Deferred[Any], Any]] = []

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.held:
            return run_inline(f, *args, **kwargs)
        d: Deferred[Any] = Deferred()
        self.held.append((d, lambda: f(*args, **kwargs)))
        return d

    def release(self) -> None:
        """Run the held call and fire its Deferred."""
        d, call = self.held[0]
        d.callback(call())


class DownloadJoinTests(SynchronousTestCase):
    """Downloads of one blob that meet while its storage opens share the opening."""

    def join(self, storage: MemoryPieceStorage) -> tuple[PeerNode, list[Deferred[Any]]]:
        """Two downloads of ``storage``'s blob, the second while the first opens it."""
        clock = Clock()
        archive = MemoryArchive()
        archive.torrents[storage.metainfo.digest] = storage
        scheduler = Scheduler(PeerID("1" * 40), clock.seconds, random.Random(0), EngineConfig())
        runner = _HoldFirstCall()
        node = PeerNode(clock, scheduler, archive, runner)
        downloads = [node.download("ns", storage.metainfo) for _ in range(2)]
        self.assertEqual(len(runner.held), 1)  # one opening for both
        runner.release()
        return node, downloads

    def stored(self, cls: type[MemoryPieceStorage]) -> MemoryPieceStorage:
        """A ``cls`` storage holding every piece of a blob, not committed yet."""
        data, meta = blob(1 * MiB, 5)
        storage = cls(meta)
        for i in range(meta.num_pieces):
            storage.write_piece(i, data[meta.piece_offset(i) : meta.piece_offset(i) + 256 * KiB])
        return storage

    def test_both_wait_before_the_torrent_acts(self) -> None:
        """
        Both downloads wait on the new torrent before its first actions run: here the
        commit of a storage that already holds every piece, failing at once, drops the
        torrent, and both downloads fail with it (a download registered after the actions
        ran would find no torrent).
        """
        storage = self.stored(_UncommittableStorage)
        node, downloads = self.join(storage)
        for d in downloads:
            failure = self.failureResultOf(d, DownloadFailed)
            self.assertIn("disk gone", str(failure.value))
        self.assertFalse(node.scheduler.has_torrent(storage.metainfo.infohash))

    def test_both_get_the_storage(self) -> None:
        """The same two downloads of a storage whose commit succeeds both get the storage."""
        storage = self.stored(MemoryPieceStorage)
        _, downloads = self.join(storage)
        for d in downloads:
            self.assertIs(self.successResultOf(d), storage)
        self.assertTrue(storage.complete())


class BufferPoolTests(SynchronousTestCase):
    """Piece receive buffers are reused, bounded, and reuse never leaks old bytes."""

    def test_reuse_and_bound(self) -> None:
        """A given-back buffer is taken again for its size only; the pool keeps max_bytes."""
        pool = BufferPool(max_bytes=2 * KiB)
        a = pool.take(KiB)
        pool.give(a)
        self.assertIsNot(pool.take(2 * KiB), a)
        self.assertIs(pool.take(KiB), a)
        pool.give(bytearray(KiB))
        pool.give(bytearray(KiB))
        pool.give(bytearray(KiB))  # over the bound: dropped
        self.assertEqual(pool.idle_bytes, 2 * KiB)


class ReusedBufferTests(OneConnection):
    """Received pieces land in pooled buffers that come back after the write."""

    def test_dirty_buffer_gives_exact_piece(self) -> None:
        """A reused buffer full of old bytes receives a piece exactly; then it is pooled again."""
        self.node.buffers.give(bytearray(b"\xff" * (256 * KiB)))
        self.handshake()
        index = min(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)
        piece = self.data[index * 256 * KiB : (index + 1) * 256 * KiB]
        self.proto.dataReceived(self.frame(PiecePayload(index, len(piece)).encode()) + piece)
        stored = self.archive.torrents[self.meta.digest]
        offset = index * 256 * KiB
        self.assertEqual(stored._data[offset : offset + 256 * KiB], piece)
        self.assertEqual(self.node.buffers.idle_bytes, 256 * KiB)

    def test_partial_payload_buffer_returns(self) -> None:
        """A connection lost mid-payload gives its buffer back to the pool."""
        self.handshake()
        index = min(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)
        self.proto.dataReceived(self.frame(PiecePayload(index, 256 * KiB).encode()) + b"x" * 10)
        self.assertEqual(self.node.buffers.idle_bytes, 0)
        self.proto.connectionLost(None)
        self.assertEqual(self.node.buffers.idle_bytes, 256 * KiB)


class HeldWrites:
    """run_blocking that runs everything at once except verify_and_write, held until released."""

    def __init__(self) -> None:
        self.held: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        """Run now, or hold piece writes."""
        if getattr(f, "__name__", "") == "verify_and_write":
            d: Deferred[Any] = Deferred()
            self.held.append((f, args, d))
            return d
        return run_inline(f, *args)

    def release(self) -> None:
        """Run the held writes."""
        held, self.held = self.held, []
        for f, args, d in held:
            d.callback(f(*args))


class WriteBackPressureTests(OneConnection):
    """A node whose writes lag stops reading its connections, and reads again when they catch up."""

    def setUp(self) -> None:
        """The one connection, with held writes and room for one unwritten piece."""
        super().setUp()
        self.writes = HeldWrites()
        self.node.run_blocking = self.writes
        self.node.max_unwritten = 256 * KiB

    def payload(self, index: int) -> bytes:
        """The wire bytes of piece ``index``."""
        piece = self.data[index * 256 * KiB : (index + 1) * 256 * KiB]
        return self.frame(PiecePayload(index, len(piece)).encode()) + piece

    def test_pause_and_resume(self) -> None:
        """Over max_unwritten the socket is paused; once the writes are done it is resumed."""
        self.handshake()
        first, second = sorted(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)[:2]
        self.proto.dataReceived(self.payload(first))
        self.assertEqual(self.transport.producerState, "producing")  # at the limit, not over
        self.proto.dataReceived(self.payload(second))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.node.unwritten, 512 * KiB)
        self.writes.release()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.node.unwritten, 0)
        self.assertEqual(self.archive.torrents[self.meta.digest].writes, 2)


class IngressLimitTests(OneConnection):
    """An ingress limit pauses reading for a while; the pause never outlives the connection."""

    def setUp(self) -> None:
        """The one connection on a node limited to 64 KiB/s of ingress."""
        super().setUp()
        self.node.bandwidth = BandwidthLimiter.of(self.clock.seconds, None, 64 * KiB)

    def start_payload(self) -> None:
        """Two bursts of payload bytes of a requested piece, each over the limit."""
        self.handshake()
        index = min(self.scheduler.torrents[self.meta.infohash].dispatcher.requested)
        piece = self.data[index * 256 * KiB : (index + 1) * 256 * KiB]
        header = self.frame(PiecePayload(index, len(piece)).encode())
        self.proto.dataReceived(header + piece[: 128 * KiB])
        self.proto.dataReceived(piece[128 * KiB : 200 * KiB])

    def test_one_resume_pending_and_it_resumes(self) -> None:
        """Repeated pauses keep a single resume timer, which resumes reading when it fires."""
        self.start_payload()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.resume_timers()), 1)
        self.clock.advance(10)
        self.assertEqual(self.transport.producerState, "producing")

    def test_payload_bytes_charged_once_with_their_header(self) -> None:
        """
        Every payload byte is charged, also those that arrive in the same read as their
        PIECE_PAYLOAD header, and the header frame is not: 128 + 72 KiB against the
        64 KiB burst leaves 136 KiB of debt.
        """
        self.start_payload()
        bucket = self.node.bandwidth.ingress
        assert bucket is not None
        self.assertEqual(bucket.available(), 64 * KiB - 200 * KiB)

    def test_connection_lost_cancels_resume(self) -> None:
        """Losing the connection while paused leaves no resume timer behind."""
        self.start_payload()
        resume = self.proto._resume_call
        assert resume is not None
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(resume.active())
        self.assertEqual(self.resume_timers(), [])

    def resume_timers(self) -> list[Any]:
        """Pending delayed calls that would resume reading this connection."""
        return [c for c in self.clock.getDelayedCalls() if c.func == self.proto._resume_reading]
