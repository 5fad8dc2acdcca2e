"""FileSender over real 127.0.0.1 sockets: order, back-pressure, shaping, failures."""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.protocols.sendfile import FileSender, FileShorter, sendfile_socket, warm

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


class FileSenderTests(TestCase):
    """FileSender on a real TCP connection."""

    def setUp(self) -> None:
        """A 4 MiB file of known bytes."""
        self.data = os.urandom(4 * 1024 * 1024)
        fd, self.path = tempfile.mkstemp()
        os.write(fd, self.data)
        self.fd = fd
        self.addCleanup(os.unlink, self.path)
        self.addCleanup(os.close, fd)

    @inlineCallbacks
    def connect(self, paused: bool = False) -> Any:
        """A connected (server protocol, client Collector) pair."""
        ready: Deferred[Any] = Deferred()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Server(ready))
        )
        self.addCleanup(port.stopListening)
        client = Collector(paused)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        server = yield ready
        yield client.connected_d

        def close() -> Deferred[None]:
            if client.closed.called:
                return client.closed
            client.transport.abortConnection()  # type: ignore[union-attr]
            return client.closed

        self.addCleanup(close)
        return server, client

    @inlineCallbacks
    def test_header_then_region(self) -> Any:
        """Bytes written before start() go first, then exactly the region, then later writes."""
        server, client = yield self.connect()
        server.transport.write(b"HEADER")
        sender = FileSender(server.transport, self.fd, 1000, 3_000_000)
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
        server, client = yield self.connect(paused=True)
        sender = FileSender(server.transport, self.fd, 0, len(self.data))
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
        server, client = yield self.connect(paused=True)
        sender = FileSender(server.transport, self.fd, 0, len(self.data))
        done = sender.start()
        yield deferLater(reactor, 0.01, lambda: None)
        client.transport.abortConnection()
        yield self.assertFailure(done, ConnectionLost, OSError)
        self.assertIsNone(server.transport.producer)

    @inlineCallbacks
    def test_shaper_is_asked_for_every_chunk(self) -> Any:
        """With a shaper, every byte is allowed in chunks of at most ``chunk``, waits respected."""
        server, client = yield self.connect()
        asked: list[int] = []

        def shaper(n: int) -> float:
            asked.append(n)
            return 0.002 if len(asked) % 2 else 0.0

        sender = FileSender(
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
        server, client = yield self.connect()
        sender = FileSender(server.transport, self.fd, len(self.data) - 10, 100)
        yield self.assertFailure(sender.start(), FileShorter)
        self.assertIsNone(server.transport.producer)
        yield client.wait_for(10)
        self.assertEqual(bytes(client.received), self.data[-10:])

    @inlineCallbacks
    def test_empty_region(self) -> Any:
        """Zero bytes: fires at once with 0 and leaves no producer behind."""
        server, _ = yield self.connect()
        sent = yield FileSender(server.transport, self.fd, 0, 0).start()
        self.assertEqual(sent, 0)
        self.assertIsNone(server.transport.producer)


class HelperTests(SynchronousTestCase):
    """sendfile_socket and warm."""

    def test_not_a_tcp_transport(self) -> None:
        """In-memory transports cannot be used (callers fall back to write())."""
        self.assertIsNone(sendfile_socket(StringTransport()))
        self.assertRaises(TypeError, FileSender, StringTransport(), 0, 0, 1)

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
