"""
kraken.io.sendfile: the one sendfile producer and its threaded-read fallback.

SendfileProducer over real 127.0.0.1 sockets (order, back-pressure, shaping, failures,
taking a connection over from twisted.web's channel, wrappers and TLS);
ThreadedReadProducer in memory; and both users, HTTP blob serving and the peer's piece
sender, sending with the same producer and failing the same way on a file cut short.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from kraken.api.serving import serve_blob
from kraken.core import Digest, PeerID, PeerInfo, PieceLengthTable
from kraken.io import run_inline
from kraken.io.sendfile import (
    FileShorter,
    SendfileProducer,
    ThreadedReadProducer,
    sendfile_socket,
    sendfile_transport,
    warm,
)
from kraken.protocols.archives import AgentArchive, OriginArchive
from kraken.protocols.peer import PeerNode
from kraken.store import BlobReader, BlobStore
from kraken.torrent.actions import EngineConfig
from kraken.torrent.scheduler import Scheduler

SMALL_BUFFER = 32 * 1024


class Collector(Protocol):
    """Client side: collects every byte received; can start paused."""

    def __init__(self, paused: bool = False) -> None:
        self.received = bytearray()
        self.paused = paused
        self.connected_d: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.waiting_for: tuple[int, Deferred[None]] | None = None

    def connectionMade(self) -> None:
        """Shrink the receive buffer so back-pressure starts early; maybe pause."""
        sock = self.transport.getHandle()  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        if self.paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.connected_d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.received += data
        if self.waiting_for is not None and len(self.received) >= self.waiting_for[0]:
            d = self.waiting_for[1]
            self.waiting_for = None
            d.callback(None)

    def wait_for(self, n: int) -> Deferred[None]:
        """Fires once ``n`` bytes arrived."""
        d: Deferred[None] = Deferred()
        if len(self.received) >= n:
            d.callback(None)
        else:
            self.waiting_for = (n, d)
        return d

    def connectionLost(self, reason: Any = None) -> None:
        """Fire ``closed``."""
        self.closed.callback(None)


class Server(Protocol):
    """Server side: hands its transport to the test."""

    def __init__(self, ready: Deferred[Any]) -> None:
        self.ready = ready

    def connectionMade(self) -> None:
        """Shrink the send buffer; tell the test."""
        sock = self.transport.getHandle()  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        self.ready.callback(self)


@inlineCallbacks
def tcp_pair(test: TestCase, paused: bool = False, wrapped: bool = False) -> Any:
    """A connected (server protocol, client Collector) pair.

    ``wrapped``: the server protocol's transport is a ``ProtocolWrapper``, as behind the
    daemons' connection-tracking listeners.
    """
    ready: Deferred[Any] = Deferred()
    factory: Any = Factory.forProtocol(lambda: Server(ready))
    if wrapped:
        factory = WrappingFactory(factory)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    test.addCleanup(port.stopListening)
    client = Collector(paused)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    server = yield ready
    yield client.connected_d

    def close() -> Deferred[None]:
        if client.closed.called:
            return client.closed
        client.transport.abortConnection()  # type: ignore[union-attr]
        return client.closed

    test.addCleanup(close)
    return server, client


class SendfileProducerTests(TestCase):
    """SendfileProducer on a real TCP connection."""

    def setUp(self) -> None:
        """A 4 MiB file of known bytes."""
        self.data = os.urandom(4 * 1024 * 1024)
        fd, self.path = tempfile.mkstemp()
        os.write(fd, self.data)
        self.fd = fd
        self.addCleanup(os.unlink, self.path)
        self.addCleanup(os.close, fd)

    @inlineCallbacks
    def test_header_then_region(self) -> Any:
        """Bytes written before start() go first, then exactly the region, then later writes."""
        server, client = yield tcp_pair(self)
        server.transport.write(b"HEADER")
        sender = SendfileProducer(server.transport, self.fd, 1000, 3_000_000)
        sent = yield sender.start()
        self.assertEqual(sent, 3_000_000)
        self.assertIsNone(server.transport.producer)
        server.transport.write(b"TRAILER")
        total = 6 + 3_000_000 + 7
        yield client.wait_for(total)
        self.assertEqual(len(client.received), total)
        self.assertEqual(bytes(client.received[:6]), b"HEADER")
        self.assertEqual(bytes(client.received[6:-7]), self.data[1000:3_001_000])
        self.assertEqual(bytes(client.received[-7:]), b"TRAILER")

    @inlineCallbacks
    def test_back_pressure(self) -> Any:
        """A receiver that stops reading stalls the sender once the socket buffers fill."""
        server, client = yield tcp_pair(self, paused=True)
        sender = SendfileProducer(server.transport, self.fd, 0, len(self.data))
        done = sender.start()
        # Let the reactor run many writable events; the sender must stall.
        for _ in range(20):
            yield deferLater(reactor, 0.005, lambda: None)
        stalled_at = sender.count - sender.left
        self.assertFalse(done.called)
        self.assertLess(stalled_at, len(self.data) // 2)
        self.assertIs(server.transport.producer, sender)
        client.transport.resumeProducing()
        yield done
        yield client.wait_for(len(self.data))
        self.assertEqual(bytes(client.received), self.data)

    @inlineCallbacks
    def test_connection_lost_while_stalled(self) -> Any:
        """The peer going away fails the Deferred with ConnectionLost and unregisters."""
        server, client = yield tcp_pair(self, paused=True)
        sender = SendfileProducer(server.transport, self.fd, 0, len(self.data))
        done = sender.start()
        yield deferLater(reactor, 0.01, lambda: None)
        client.transport.abortConnection()
        yield self.assertFailure(done, ConnectionLost, OSError)
        self.assertIsNone(server.transport.producer)

    @inlineCallbacks
    def test_shaper_is_asked_for_every_chunk(self) -> Any:
        """With a shaper, every byte is allowed in chunks of at most ``chunk``, waits respected."""
        server, client = yield tcp_pair(self)
        asked: list[int] = []

        def shaper(n: int) -> float:
            asked.append(n)
            return 0.002 if len(asked) % 2 else 0.0

        sender = SendfileProducer(
            server.transport, self.fd, 0, 1_000_000, chunk=64 * 1024, shaper=shaper, clock=reactor
        )
        yield sender.start()
        yield client.wait_for(1_000_000)
        self.assertEqual(bytes(client.received), self.data[:1_000_000])
        self.assertEqual(sum(asked), 1_000_000)
        self.assertLessEqual(max(asked), 64 * 1024)

    @inlineCallbacks
    def test_file_shorter_than_region(self) -> Any:
        """A region past the end of the file fails with FileShorter after sending what exists."""
        server, client = yield tcp_pair(self)
        sender = SendfileProducer(server.transport, self.fd, len(self.data) - 10, 100)
        yield self.assertFailure(sender.start(), FileShorter)
        self.assertIsNone(server.transport.producer)
        yield client.wait_for(10)
        self.assertEqual(bytes(client.received), self.data[-10:])

    @inlineCallbacks
    def test_empty_region(self) -> Any:
        """Zero bytes: fires at once with 0 and leaves no producer behind."""
        server, _ = yield tcp_pair(self)
        sent = yield SendfileProducer(server.transport, self.fd, 0, 0).start()
        self.assertEqual(sent, 0)
        self.assertIsNone(server.transport.producer)

    @inlineCallbacks
    def test_takes_over_from_the_registered_producer(self) -> Any:
        """
        As under twisted.web: with a streaming producer registered (the HTTP channel) and
        headers buffered, the headers go first, then the region; the channel is registered
        again afterwards, as a streaming producer.
        """
        server, client = yield tcp_pair(self)
        channel = _Channel()
        server.transport.registerProducer(channel, True)
        server.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        sender = SendfileProducer(server.transport, self.fd, 0, len(self.data))
        done = sender.start()
        self.assertIs(server.transport.producer, sender)
        sent = yield done
        self.assertEqual(sent, len(self.data))
        self.assertIs(server.transport.producer, channel)
        self.assertTrue(server.transport.streamingProducer)
        yield client.wait_for(19 + len(self.data))
        self.assertEqual(bytes(client.received), b"HTTP/1.1 200 OK\r\n\r\n" + self.data)

    @inlineCallbacks
    def test_cancel_gives_the_connection_back(self) -> Any:
        """Cancelling a stalled send stops it and registers the previous producer again."""
        server, _ = yield tcp_pair(self, paused=True)
        channel = _Channel()
        server.transport.registerProducer(channel, True)
        sender = SendfileProducer(server.transport, self.fd, 0, len(self.data))
        done = sender.start()
        yield deferLater(reactor, 0.01, lambda: None)
        done.cancel()
        yield self.assertFailure(done, CancelledError)
        self.assertIs(server.transport.producer, channel)
        self.assertLess(sender.sent, len(self.data))

    @inlineCallbacks
    def test_through_a_protocol_wrapper(self) -> Any:
        """Behind a (non-TLS) ProtocolWrapper the producer sends on the connection under it."""
        server, client = yield tcp_pair(self, wrapped=True)
        self.assertIsInstance(server.transport, ProtocolWrapper)
        self.assertIsNone(sendfile_socket(server.transport))
        connection = sendfile_transport(server.transport)
        self.assertIsInstance(connection, tcp.Connection)
        server.transport.write(b"HEADER")
        sent = yield SendfileProducer(server.transport, self.fd, 10, 100_000).start()
        self.assertEqual(sent, 100_000)
        self.assertIsNone(connection.producer)
        yield client.wait_for(6 + 100_000)
        self.assertEqual(bytes(client.received), b"HEADER" + self.data[10:100_010])

    @inlineCallbacks
    def test_never_through_tls(self) -> Any:
        """A TLS layer over a plain TCP connection is refused: its bytes must be encrypted."""
        server, _ = yield tcp_pair(self)
        tls = TLSMemoryBIOProtocol(None, Protocol())  # type: ignore[arg-type]
        tls.transport = server.transport
        self.assertIsNone(sendfile_transport(tls))
        self.assertRaises(TypeError, SendfileProducer, tls, self.fd, 0, 1)


class HelperTests(SynchronousTestCase):
    """sendfile_socket and warm."""

    def test_not_a_tcp_transport(self) -> None:
        """In-memory transports cannot be used (callers fall back to write())."""
        self.assertIsNone(sendfile_socket(StringTransport()))
        self.assertRaises(TypeError, SendfileProducer, StringTransport(), 0, 0, 1)

    def test_warm_ignores_errors(self) -> None:
        """warm() on a closed descriptor does not raise (the later sendfile reports errors)."""
        fd, path = tempfile.mkstemp()
        os.close(fd)
        os.unlink(path)
        warm(fd, 0, 4096)

    def test_warm_reads_a_file(self) -> None:
        """warm() on a real file returns and leaves the file offset alone."""
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        os.write(fd, b"x" * 100_000)
        os.lseek(fd, 5, os.SEEK_SET)
        warm(fd, 0, 100_000)
        self.assertEqual(os.lseek(fd, 0, os.SEEK_CUR), 5)


@implementer(IPushProducer)
class _Channel:
    """Stands in for twisted.web's HTTP channel, the streaming producer of a connection."""

    def __init__(self) -> None:
        self.stopped = False

    def pauseProducing(self) -> None:
        """Nothing to pause."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Remember it."""
        self.stopped = True


class _QueuedRunner:
    """A BlockingRunner whose calls wait until the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((d, f, args))
        return d

    def run_one(self) -> None:
        """Run the oldest queued call and fire its Deferred."""
        d, f, args = self.calls.pop(0)
        d.callback(f(*args))


class ThreadedReadProducerTests(SynchronousTestCase):
    """ThreadedReadProducer: one read in flight, back-pressure, the same endings."""

    def setUp(self) -> None:
        """A file of 10,000 known bytes."""
        self.data = os.urandom(10_000)
        fd, path = tempfile.mkstemp()
        os.write(fd, self.data)
        self.fd = fd
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)

    def test_region_in_chunks(self) -> None:
        """The region arrives in order, ``chunk`` bytes per read; the producer unregisters."""
        consumer = StringTransport()
        producer = ThreadedReadProducer(consumer, self.fd, 100, 9_000, run_inline, chunk=1000)
        self.assertEqual(self.successResultOf(producer.start()), 9_000)
        self.assertEqual(consumer.value(), self.data[100:9_100])
        self.assertIsNone(consumer.producer)

    def test_back_pressure(self) -> None:
        """No read is started while the consumer has paused the producer."""
        runner = _QueuedRunner()
        consumer = StringTransport()
        producer = ThreadedReadProducer(consumer, self.fd, 0, 3_000, runner, chunk=1000)
        done = producer.start()
        self.assertEqual(len(runner.calls), 1)
        producer.pauseProducing()
        runner.run_one()
        self.assertEqual(runner.calls, [])
        producer.resumeProducing()
        runner.run_one()
        runner.run_one()
        self.assertEqual(self.successResultOf(done), 3_000)
        self.assertEqual(consumer.value(), self.data[:3_000])

    def test_stop_producing(self) -> None:
        """The connection going away fails the Deferred with ConnectionLost; reads stop."""
        runner = _QueuedRunner()
        producer = ThreadedReadProducer(StringTransport(), self.fd, 0, 3_000, runner, chunk=1000)
        done = producer.start()
        producer.stopProducing()
        self.failureResultOf(done, ConnectionLost)
        runner.run_one()
        self.assertEqual(runner.calls, [])

    def test_read_error(self) -> None:
        """A failing read fails the Deferred with its error and unregisters."""
        consumer = StringTransport()
        fd, path = tempfile.mkstemp()
        os.close(fd)
        os.unlink(path)
        producer = ThreadedReadProducer(consumer, fd, 0, 10, run_inline)
        self.failureResultOf(producer.start(), OSError)
        self.assertIsNone(consumer.producer)


class ShortFileTests(TestCase):
    """Both producers end the same way when the file is shorter than the region."""

    @inlineCallbacks
    def test_both_producers_fail_with_file_shorter(self) -> Any:
        """Each sends the bytes that exist, then fails with FileShorter and unregisters."""
        data = os.urandom(50_000)
        fd, path = tempfile.mkstemp()
        os.write(fd, data)
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        consumer = StringTransport()
        threaded = ThreadedReadProducer(consumer, fd, 40_000, 20_000, run_inline, chunk=4096)
        self.failureResultOf(threaded.start(), FileShorter)
        self.assertEqual(threaded.sent, 10_000)
        self.assertEqual(consumer.value(), data[40_000:])
        self.assertIsNone(consumer.producer)
        server, client = yield tcp_pair(self)
        sender = SendfileProducer(server.transport, fd, 40_000, 20_000)
        yield self.assertFailure(sender.start(), FileShorter)
        self.assertEqual(sender.sent, 10_000)
        self.assertIsNone(server.transport.producer)
        yield client.wait_for(10_000)
        self.assertEqual(bytes(client.received), data[40_000:])


class _BlobPage(Resource):
    """Serves one blob with ``serve_blob``; remembers what it returned."""

    isLeaf = True

    def __init__(self, store: BlobStore, digest: Digest, run: Any, use_sendfile: bool) -> None:
        super().__init__()
        self.store = store
        self.digest = digest
        self.run = run
        self.use_sendfile = use_sendfile
        self.served: Deferred[int] = Deferred()

    def render_GET(self, request: Any) -> Any:
        """Serve the blob; finish the request unless its connection is gone."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = Deferred.fromCoroutine(
            serve_blob(request, self.store, self.digest, self.run, use_sendfile=self.use_sendfile)
        )

        def done(sent: int) -> None:
            if not gone:
                request.finish()
            self.served.callback(sent)

        d.addCallback(done)
        return NOT_DONE_YET


class _HTTPClient(Protocol):
    """Sends one GET, collects the answer until the connection closes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        """Ask for the blob."""
        self.transport.write(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        """Fire ``closed`` with everything received."""
        self.closed.callback(bytes(self.received))


def _recording_starts(test: TestCase, cls: type[Any]) -> list[tuple[type[Any], Any]]:
    """Patch ``cls.start`` to record each producer's class and outcome (count or Failure)."""
    outcomes: list[tuple[type[Any], Any]] = []
    original = cls.start

    def start(producer: Any) -> Deferred[int]:
        d: Deferred[int] = original(producer)

        def record(result: Any) -> Any:
            outcomes.append((type(producer), result))
            return result

        return d.addBoth(record)

    test.patch(cls, "start", start)
    return outcomes


class SendfileUsersTests(TestCase):
    """HTTP blob serving and the peer's piece sender share the producers and their endings."""

    timeout = 30

    @inlineCallbacks
    def serve_short_blob(self, use_sendfile: bool) -> Any:
        """GET a 3 MiB blob whose file loses all but 1 MiB + 5 bytes once it is opened."""
        data = os.urandom(3 * 1024 * 1024)
        store = BlobStore(self.mktemp(), reactor)
        digest = store.put_bytes(data).digest
        kept = 1024 * 1024 + 5

        def cutting_runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            result = f(*args)
            if isinstance(result, BlobReader):
                os.truncate(result.path, kept)
            return succeed(result)

        page = _BlobPage(store, digest, cutting_runner, use_sendfile)
        port = reactor.listenTCP(0, Site(page), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = _HTTPClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        answer = yield client.closed
        served = yield page.served
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % len(data), head)
        # Aborted: the client gets at most the bytes that exist (a reset may drop the
        # tail still in flight), never the promised length.
        self.assertTrue(data[:kept].startswith(body))
        self.assertEqual(served, kept)

    @inlineCallbacks
    def test_http_short_blob_either_way(self) -> Any:
        """
        serve_blob sends with SendfileProducer on plain TCP and ThreadedReadProducer when told
        not to; a blob file cut short fails either with FileShorter after the bytes that
        exist, and the client sees the connection close before Content-Length.
        """
        sendfile = _recording_starts(self, SendfileProducer)
        threaded = _recording_starts(self, ThreadedReadProducer)
        yield self.serve_short_blob(use_sendfile=True)
        yield self.serve_short_blob(use_sendfile=False)
        for outcomes, cls in ((sendfile, SendfileProducer), (threaded, ThreadedReadProducer)):
            self.assertEqual([c for c, _ in outcomes], [cls])
            self.assertIsInstance(outcomes[0][1], Failure)
            self.assertTrue(outcomes[0][1].check(FileShorter))

    @inlineCallbacks
    def test_peer_piece_sender(self) -> Any:
        """
        An origin sends pieces with the same SendfileProducer; a blob file cut short fails
        the piece with FileShorter (and the connection, whose header promised the bytes).
        """
        outcomes = _recording_starts(self, SendfileProducer)
        data = os.urandom(1024 * 1024)
        origin_store = BlobStore(self.mktemp(), reactor)
        meta = origin_store.put_bytes(data, PieceLengthTable(((0, 256 * 1024),)))
        with origin_store.open_reader(meta.digest) as reader:
            os.truncate(reader.path, 0)
        origin_sched = Scheduler(
            PeerID("0" * 40),
            reactor.seconds,
            random.Random(1),
            EngineConfig(origin=True, announce=False, max_conns_per_address=None),
        )
        origin = PeerNode(reactor, origin_sched, OriginArchive(origin_store), run_inline)
        origin.start()
        self.addCleanup(origin.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(origin.factory())
        self.addCleanup(port.stopListening)
        info = PeerInfo(origin_sched.peer_id, "127.0.0.1", port.getHost().port, origin=True)
        agent = PeerNode(
            reactor,
            Scheduler(PeerID("1" * 40), reactor.seconds, random.Random(2), EngineConfig()),
            AgentArchive(BlobStore(self.mktemp(), reactor)),
            run_inline,
            announcer=lambda action: succeed(([info], 1.0)),
        )
        agent.start()
        self.addCleanup(agent.stop)
        agent.download("ns", meta).addErrback(lambda _: None)
        for _ in range(500):
            if outcomes:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(outcomes)
        cls, result = outcomes[0]
        self.assertIs(cls, SendfileProducer)
        self.assertIsInstance(result, Failure)
        self.assertTrue(result.check(FileShorter))
