"""Real sockets on 127.0.0.1: an origin seeding from its store, 5 agents downloading."""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from kraken.certs import CA_CERT_FILE, cert_paths, ensure_certificates
from kraken.config.sections import TLSConfig
from kraken.core import Bitfield, PeerID, PeerInfo, PieceLengthTable
from kraken.io.runner import run_inline, threadpool_runner
from kraken.protocols.archives import AgentArchive, OriginArchive
from kraken.protocols.peer import ConnectionState, PeerNode, PeerProtocol
from kraken.store import BlobStore
from kraken.tls import ClusterTLS, TLSServerEndpoint
from kraken.torrent.actions import Announce, EngineConfig
from kraken.torrent.archive import IPieceFiles
from kraken.torrent.bandwidth import BandwidthLimiter
from kraken.torrent.messages import Handshake
from kraken.torrent.scheduler import Scheduler


class ThreadCheckingArchive:
    """Wraps an archive; records the thread of every piece read/write (and its hashing).

    With ``files`` the storages also offer pieces as file regions (sendfile).
    """

    def __init__(self, inner: Any, seen: list[threading.Thread], files: bool = False) -> None:
        self.inner = inner
        self.seen = seen
        self.wrap = _FileStorage if files else _Storage

    def create(self, namespace, metainfo):
        """Wrap created storage."""
        return self.wrap(self.inner.create(namespace, metainfo), self.seen)

    def open(self, namespace, digest):
        """Wrap opened storage."""
        storage = self.inner.open(namespace, digest)
        return None if storage is None else self.wrap(storage, self.seen)


class _Storage:
    def __init__(self, inner: Any, seen: list[threading.Thread]) -> None:
        self.inner = inner
        self.seen = seen
        self.metainfo = inner.metainfo

    def bitfield(self):
        return self.inner.bitfield()

    def complete(self):
        return self.inner.complete()

    def read_piece(self, index):
        self.seen.append(threading.current_thread())
        return self.inner.read_piece(index)

    def write_piece(self, index, data):
        # verify_and_write hashes in this same call, in this same thread.
        self.seen.append(threading.current_thread())
        return self.inner.write_piece(index, data)

    def commit(self):
        self.seen.append(threading.current_thread())
        return self.inner.commit()


@implementer(IPieceFiles)
class _FileStorage(_Storage):
    opened = 0

    def open_piece(self, index):
        self.seen.append(threading.current_thread())
        region = self.inner.open_piece(index)
        if region is not None:
            _FileStorage.opened += 1
        return region


class RealSocketTests(TestCase):
    """One reactor, real TCP, real thread pool, real BlobStores."""

    timeout = 60

    def bare_node(self, digit: str) -> PeerNode:
        """An agent's PeerNode with no torrent, its store I/O run inline."""
        scheduler = Scheduler(PeerID(digit * 40), reactor.seconds, random.Random(0), EngineConfig())
        return PeerNode(
            reactor, scheduler, AgentArchive(BlobStore(self.mktemp(), reactor)), run_inline
        )

    @inlineCallbacks
    def test_frames_go_straight_to_an_idle_socket(self) -> Any:
        """
        A control frame on an idle connection is written to the socket at once (no queue,
        no writer registration until the reactor's next turn); one written behind queued
        bytes waits its turn, so the order of bytes holds.
        """
        node = self.bare_node("8")
        received = bytearray()
        done = Deferred()

        class Sink(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.extend(data)
                if len(received) >= 12 + 8:
                    done.callback(None)

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Sink)
        )
        self.addCleanup(port.stopListening)
        proto = PeerProtocol(node)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), proto)
        self.addCleanup(proto.transport.abortConnection)
        proto.write_frame(b"12345678")
        self.assertEqual(proto.transport.dataBuffer, b"")
        self.assertEqual(proto.transport._tempDataBuffer, [])
        self.assertNotIn(proto.transport, reactor.getWriters())
        proto.transport.write(b"queued")  # bytes the transport holds ...
        proto.write_frame(b"ab")  # ... go before this frame
        yield done
        self.assertEqual(bytes(received), b"\0\0\0\x0812345678" + b"queued" + b"\0\0\0\x02ab")

    def test_origin_and_five_agents(self) -> Any:
        """5 agents download 8 MiB from an origin store over TCP; no piece I/O on the reactor."""
        return self.swarm(files=False)

    @inlineCallbacks
    def test_peer_sockets_have_nodelay(self) -> Any:
        """
        Peer connections set TCP_NODELAY: with Nagle's algorithm a small piece request
        waits for the ACK of what was sent before it (bench.pair under the agents' default
        bandwidth limits: 67-96 MB/s with it, 451-465 without).
        """
        node = self.bare_node("9")
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(node.factory())
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        for _ in range(100):
            if node.live:
                break
            yield deferLater(reactor, 0.01)
        (proto,) = node.live
        handle = proto.raw_transport().getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        yield node.stop()

    @inlineCallbacks
    def test_origin_and_five_agents_sendfile(self) -> Any:
        """The same with pieces sent by sendfile: opened (and warmed) off the reactor thread."""
        _FileStorage.opened = 0
        yield self.swarm(files=True)
        # The origin's pieces (16) at least went out as file regions.
        self.assertGreaterEqual(_FileStorage.opened, 16)

    @inlineCallbacks
    def test_shaped_agents_read_into_piece_buffers(self) -> Any:
        """
        Agents with bandwidth limits (on by default) read with recv_into (payloads into
        the piece buffer, frames into the node's read buffer), at most the ingress
        bucket's chunk at a time (about 10 ms of its rate: 200 000 bytes at 20 MB/s), so
        that the bucket is charged in small steps: every payload byte is charged once.
        """
        reads: list[int] = []
        charged: list[int] = []
        real = socket.socket.recv_into
        real_delay = BandwidthLimiter.receive_delay

        def receive_delay(limiter: BandwidthLimiter, n: int) -> float:
            charged.append(n)
            return real_delay(limiter, n)

        def recv_into(sock: socket.socket, buf: Any, nbytes: int = 0, flags: int = 0) -> int:
            n = real(sock, buf, nbytes, flags)
            reads.append(n)
            return n

        self.patch(socket.socket, "recv_into", recv_into)
        self.patch(BandwidthLimiter, "receive_delay", receive_delay)
        yield self.swarm(
            files=True, bandwidth=lambda: BandwidthLimiter.of(reactor.seconds, 2e9, 2e7)
        )
        chunk = 200_000
        # Every agent received 16 pieces of 512 KiB, all of them through recv_into.
        self.assertGreaterEqual(sum(reads), 5 * 8 * 1024 * 1024)
        self.assertLessEqual(max(reads), chunk)
        # Payload bytes only (frames are not shaped), each once, in steps of a chunk.
        self.assertGreaterEqual(sum(charged), 5 * 8 * 1024 * 1024)
        self.assertLessEqual(sum(charged), sum(reads))
        self.assertLessEqual(max(charged), chunk)

    @inlineCallbacks
    def swarm(
        self, files: bool, bandwidth: Callable[[], BandwidthLimiter | None] = lambda: None
    ) -> Any:
        """Run the origin + 5 agents; check the bytes and the threads."""
        pool = ThreadPool(2, 8, "peer-test")
        pool.start()
        self.addCleanup(pool.stop)
        run = threadpool_runner(reactor, pool)
        seen: list[threading.Thread] = []
        data = random.Random(7).randbytes(8 * 1024 * 1024)
        origin_store = BlobStore(self.mktemp(), reactor)
        meta = origin_store.put_bytes(data, PieceLengthTable(((0, 512 * 1024),)))
        origin_sched = Scheduler(
            PeerID("0" * 40),
            reactor.seconds,
            random.Random(1),
            # Every agent dials from 127.0.0.1.
            EngineConfig(origin=True, announce=False, max_conns_per_address=None),
        )
        origin = PeerNode(
            reactor,
            origin_sched,
            ThreadCheckingArchive(OriginArchive(origin_store), seen, files),
            run,
        )
        origin.start()
        self.addCleanup(origin.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(origin.factory())
        self.addCleanup(port.stopListening)
        peers = [PeerInfo(origin_sched.peer_id, "127.0.0.1", port.getHost().port, origin=True)]

        def announcer(action: Announce):
            return succeed((list(peers), 1.0))

        agents = []
        for i in range(5):
            store = BlobStore(self.mktemp(), reactor)
            sched = Scheduler(
                PeerID(f"{i + 1:040x}"),
                reactor.seconds,
                random.Random(i),
                EngineConfig(max_conns_per_address=None),
            )
            node = PeerNode(
                reactor,
                sched,
                ThreadCheckingArchive(AgentArchive(store), seen, files),
                run,
                announcer=announcer,
                bandwidth=bandwidth(),
            )
            node.start()
            self.addCleanup(node.stop)
            p = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(node.factory())
            self.addCleanup(p.stopListening)
            peers.append(PeerInfo(sched.peer_id, "127.0.0.1", p.getHost().port))
            agents.append((node, store))
        yield gatherResults([node.download("ns", meta) for node, _ in agents])
        for _, store in agents:
            self.assertTrue(store.has(meta.digest))
            with store.open_reader(meta.digest) as reader:
                self.assertEqual(reader.pread(len(data), 0), data)
        self.assertTrue(seen)
        main = threading.main_thread()
        self.assertFalse([t for t in seen if t is main], "piece I/O on the reactor thread")
        # Payloads raise SO_RCVLOWAT while they stream in; between them it is back at 1,
        # or a control frame shorter than the mark would wait in the socket.  (An endgame
        # duplicate may still be arriving on a connection: it keeps its mark until done.
        # A connection the engine closed as its last payload ended no longer reads, and
        # may still be flushing: its mark does not matter.)
        idle = [
            p
            for node, _ in agents
            for p in node.live
            if p._sock and not p._raw_left and p.state != ConnectionState.CLOSED
        ]
        for proto in idle:
            self.assertEqual(proto._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT), 1)


class _Squatter(Int32StringReceiver):
    """An attacker's connection: a leecher handshake with a fresh peer id, then silence."""

    def __init__(self, attack: _SlotAttack) -> None:
        self.attack = attack

    def connectionMade(self) -> None:
        """Say hello as a new leecher would."""
        if not self.attack.running:
            self.transport.abortConnection()
            return
        meta = self.attack.meta
        hello = Handshake(
            PeerID.random(), meta.infohash, meta.digest, "ns", Bitfield(meta.num_pieces)
        )
        self.sendString(hello.encode())

    def stringReceived(self, string: bytes) -> None:
        """Ignore the seeder."""

    def connectionLost(self, reason: Any = None) -> None:
        """Dropped (refused, evicted): reconnect 20 ms later (the attacker shares our CPU)."""
        self.attack.dropped += 1
        if self.attack.running:
            self.attack.later.append(reactor.callLater(0.02, self.attack.connect))


class _SlotAttack:
    """Connections to a peer port from one other host (127.0.0.2), each reconnecting."""

    def __init__(self, port: int, meta: Any) -> None:
        self.port = port
        self.meta = meta
        self.running = True
        self.dropped = 0
        self.protocols: list[_Squatter] = []
        self.later: list[Any] = []
        self.connecting: list[Any] = []

    def connect(self) -> None:
        """One more squatter."""
        proto = _Squatter(self)
        self.protocols.append(proto)
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port, bindAddress=("127.0.0.2", 0), timeout=5
        )
        connecting = connectProtocol(endpoint, proto)
        self.connecting.append(connecting)
        connecting.addErrback(lambda f: None)

    def stop(self) -> None:
        """Stop reconnecting and drop every connection."""
        self.running = False
        for call in self.later:
            if call.active():
                call.cancel()
        for connecting in self.connecting:
            connecting.cancel()
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.abortConnection()


class SlotSquattingSocketTests(TestCase):
    """Issue 18, case 1 on real sockets: one host holding an origin's slots cannot stop a pull."""

    timeout = 60

    @inlineCallbacks
    def test_pull_while_a_host_squats_the_origin(self) -> Any:
        """
        12 connections from 127.0.0.2, each a leecher handshake then silence, reconnecting
        when dropped, hold 2 of the origin's 10 slots (default max_conns_per_address); an
        agent on 127.0.0.1 pulls 8 MiB within twice the time it takes unattacked.
        """
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError as e:
            raise SkipTest(f"cannot bind 127.0.0.2: {e}") from None
        finally:
            probe.close()
        pool = ThreadPool(2, 4, "squat-test")
        pool.start()
        self.addCleanup(pool.stop)
        run = threadpool_runner(reactor, pool)
        data = random.Random(8).randbytes(8 * 1024 * 1024)
        origin_store = BlobStore(self.mktemp(), reactor)
        meta = origin_store.put_bytes(data, PieceLengthTable(((0, 256 * 1024),)))
        origin_sched = Scheduler(
            PeerID("0" * 40),
            reactor.seconds,
            random.Random(1),
            # Each pull is alone with the origin: no piece goes elsewhere first.
            EngineConfig(origin=True, announce=False, origin_spread_window=None),
        )
        origin = PeerNode(reactor, origin_sched, OriginArchive(origin_store), run)
        origin.start()
        self.addCleanup(origin.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(origin.factory())
        self.addCleanup(port.stopListening)
        origin_info = PeerInfo(origin_sched.peer_id, "127.0.0.1", port.getHost().port, origin=True)

        @inlineCallbacks
        def pull(i: int) -> Any:
            store = BlobStore(self.mktemp(), reactor)
            sched = Scheduler(
                PeerID(f"{i:040x}"), reactor.seconds, random.Random(i), EngineConfig()
            )
            node = PeerNode(
                reactor,
                sched,
                AgentArchive(store),
                run,
                announcer=lambda action: succeed(([origin_info], 1.0)),
                # 4 MB/s (a burst of 4 MB, then that rate): the pull takes about 1.1 s.
                bandwidth=BandwidthLimiter.of(reactor.seconds, 2e9, 4e6),
            )
            node.start()
            began = reactor.seconds()
            try:
                yield node.download("ns", meta)
            finally:
                yield node.stop()
            took = reactor.seconds() - began
            with store.open_reader(meta.digest) as reader:
                self.assertEqual(reader.pread(len(data), 0), data)
            return took

        alone = yield pull(1)
        attack = _SlotAttack(port.getHost().port, meta)
        self.addCleanup(attack.stop)
        for _ in range(12):
            attack.connect()
        for _ in range(200):
            if attack.dropped >= 10 and len(origin_sched.conns) == 2:
                break
            yield deferLater(reactor, 0.01)
        self.assertEqual(len(origin_sched.conns), 2)
        attacked = yield pull(2)
        self.assertTrue(attack.running)
        attack.stop()
        yield deferLater(reactor, 0.05)  # the aborted connections close
        self.assertLessEqual(attacked, 2 * alone, f"{attacked:.2f} s attacked, {alone:.2f} s alone")


def _peer_tls(directory: str, name: str, *, ca_dir: str | None = None) -> Any:
    """The peer TLS context of ``name``'s certificate in ``directory`` (trusting ``ca_dir``)."""
    ensure_certificates(directory, [name])
    cert, key = cert_paths(directory, name)
    ca = os.path.join(ca_dir or directory, CA_CERT_FILE)
    return ClusterTLS.from_config(TLSConfig(ca=ca, cert=cert, key=key, peer=True)).peer_options()


class PeerTLSTests(TestCase):
    """Mutual TLS on peer ports (issue 18): cluster certificates only; plain piece paths."""

    timeout = 60

    @inlineCallbacks
    def origin(self, seen: list[threading.Thread]) -> Any:
        """An origin seeding 4 MiB behind a peer TLS listener; (port, meta, data, scheduler)."""
        pool = ThreadPool(2, 4, "peer-tls-test")
        pool.start()
        self.addCleanup(pool.stop)
        self.run_blocking = threadpool_runner(reactor, pool)
        data = random.Random(9).randbytes(4 * 1024 * 1024)
        store = BlobStore(self.mktemp(), reactor)
        meta = store.put_bytes(data, PieceLengthTable(((0, 256 * 1024),)))
        sched = Scheduler(
            PeerID("0" * 40),
            reactor.seconds,
            random.Random(1),
            EngineConfig(origin=True, announce=False),
        )
        node = PeerNode(
            reactor,
            sched,
            ThreadCheckingArchive(OriginArchive(store), seen, files=True),
            self.run_blocking,
        )
        node.start()
        self.addCleanup(node.stop)
        self.certs = self.mktemp()
        endpoint = TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            _peer_tls(self.certs, "origin"),
            reactor,
        )
        port = yield endpoint.listen(node.factory())
        self.addCleanup(port.stopListening)
        info = PeerInfo(sched.peer_id, "127.0.0.1", port.getHost().port, origin=True)
        return info, meta, data, sched, node

    def agent(self, info: PeerInfo, tls: Any) -> tuple[PeerNode, BlobStore]:
        """An agent dialling ``info`` with ``tls`` (None: plain TCP)."""
        store = BlobStore(self.mktemp(), reactor)
        sched = Scheduler(PeerID("1" * 40), reactor.seconds, random.Random(2), EngineConfig())
        node = PeerNode(
            reactor,
            sched,
            AgentArchive(store),
            self.run_blocking,
            announcer=lambda action: succeed(([info], 1.0)),
            tls=tls,
            handshake_timeout=2.0,
        )
        node.start()
        self.addCleanup(node.stop)
        return node, store

    @inlineCallbacks
    def test_pull_over_peer_tls(self) -> Any:
        """
        With a certificate of the cluster CA an agent pulls over TLS: both sides' transports
        are TLS, the bytes are right, and the seeder streams pieces it read in a thread (no
        sendfile: a file region cannot go through the TLS layer).
        """
        seen: list[threading.Thread] = []
        _FileStorage.opened = 0
        info, meta, data, _, origin = yield self.origin(seen)
        node, store = self.agent(info, _peer_tls(self.certs, "agent"))
        yield node.download("ns", meta)
        with store.open_reader(meta.digest) as reader:
            self.assertEqual(reader.pread(len(data), 0), data)
        self.assertEqual(_FileStorage.opened, 0)
        live = [*origin.live, *node.live]
        self.assertTrue(live)
        self.assertTrue(all(ISSLTransport.providedBy(p.transport) for p in live))
        main = threading.main_thread()
        self.assertFalse([t for t in seen if t is main], "piece I/O on the reactor thread")

    @inlineCallbacks
    def assert_refused(self, tls: Any) -> Any:
        """An agent dialling with ``tls`` never gets a handshake in; the origin holds nothing."""
        info, meta, _, origin_sched, _ = yield self.origin([])
        node, _ = self.agent(info, tls(self.certs))
        node.download("ns", meta).addErrback(lambda f: None)
        for _ in range(400):
            if node.scheduler.is_blacklisted(meta.infohash, info.peer_id):
                break
            yield deferLater(reactor, 0.01)
        self.assertTrue(node.scheduler.is_blacklisted(meta.infohash, info.peer_id))
        self.assertEqual(origin_sched.conns, {})
        yield node.stop()

    def test_plain_peer_refused(self) -> Any:
        """A peer speaking plain TCP to a TLS peer port is refused."""
        return self.assert_refused(lambda certs: None)

    def test_peer_without_certificate_refused(self) -> Any:
        """A TLS peer presenting no certificate is refused at the TLS handshake."""

        def no_certificate(certs: str) -> Any:
            with open(os.path.join(certs, CA_CERT_FILE), "rb") as f:
                ca = x509.load_pem_x509_certificate(f.read())
            return CertificateOptions(
                verify=True,
                caCerts=[crypto.X509.from_cryptography(ca)],
                raiseMinimumTo=TLSVersion.TLSv1_2,
            )

        return self.assert_refused(no_certificate)

    def test_peer_of_another_ca_refused(self) -> Any:
        """A TLS peer whose certificate another CA signed is refused at the TLS handshake."""
        other = self.mktemp()
        return self.assert_refused(lambda certs: _peer_tls(other, "agent", ca_dir=certs))
