"""
The parts of Twisted's TCP transport the peer driver relies on beyond the public interfaces.

``PeerProtocol._install_recv_into`` (kraken/protocols/peer.py) replaces ``doRead`` on one
live ``twisted.internet.tcp.Connection`` to receive piece payloads with ``recv_into``
straight into the piece buffer, and ``kraken.io.sendfile`` sends from the socket
that ``getHandle()`` returns.  That is a measured win (docs/benchmarks.md) that depends on
how the reactor drives a transport:

* the reactor calls ``doRead`` looked up on the *instance*, so an instance attribute
  replaces the class's method for that connection only;
* ``doRead`` returning ``None`` means "keep reading", ``CONNECTION_DONE`` or
  ``CONNECTION_LOST`` makes the reactor drop the connection with that reason;
* ``transport.protocol`` is the protocol that receives ``dataReceived``;
* ``getHandle()`` is the connected, non-blocking ``socket.socket``;
* ``PeerProtocol._write`` sends a frame straight to that socket when the transport
  holds nothing: nothing is queued when ``_tempDataBuffer`` is empty and ``offset``
  has reached the end of ``dataBuffer``; ``producer``, ``connected`` and
  ``disconnecting`` say whether anyone else writes or the connection is ending.

These tests check each point with real sockets, so that a Twisted upgrade that changes
one of them fails here rather than in a swarm.  setup.cfg pins Twisted below the next
major version that has not been checked.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase


class _Server(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.connected_d: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(bytes(data))

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


class TransportContractTests(TestCase):
    """What ``_install_recv_into`` and sendfile assume of ``tcp.Connection``."""

    async def connect(self) -> tuple[_Server, Protocol]:
        """A server protocol and a client protocol connected over 127.0.0.1."""
        server = _Server()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: server)
        )
        self.addCleanup(port.stopListening)
        client = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        await server.connected_d
        return server, client

    async def test_instance_doread_replaces_the_method(self) -> None:
        """The reactor calls an instance's own ``doRead``; ``getHandle()`` is its socket;
        ``protocol`` is the receiving protocol; ``CONNECTION_DONE`` ends the connection."""
        server, client = await self.connect()
        transport: Any = server.transport
        self.assertIsInstance(transport, tcp.Connection)
        sock = transport.getHandle()
        self.assertIsInstance(sock, socket.socket)
        self.assertFalse(sock.getblocking())
        self.assertIs(transport.protocol, server)
        calls: list[int] = []
        scratch = bytearray(65536)

        def doRead() -> Any:
            try:
                n = sock.recv_into(scratch)
            except BlockingIOError:
                return None
            calls.append(n)
            if not n:
                return CONNECTION_DONE
            return transport.protocol.dataReceived(memoryview(scratch)[:n])

        transport.doRead = doRead
        assert client.transport is not None
        client.transport.write(b"hello")
        for _ in range(200):
            if server.received:
                break
            await _later(0.01)
        self.assertEqual(server.received, [b"hello"])
        self.assertTrue(calls)
        client.transport.loseConnection()
        await server.lost
        assert server.reason is not None
        self.assertTrue(server.reason.check(ConnectionDone))
        self.assertEqual(calls[-1], 0)

    async def test_write_queue_attributes(self) -> None:
        """Queued bytes show in ``_tempDataBuffer`` / ``dataBuffer`` and ``offset`` until
        sent; an idle transport has neither, no producer, and is connected."""
        server, client = await self.connect()
        transport: Any = client.transport
        self.assertIsInstance(transport, tcp.Connection)
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer), ([], b""))
        self.assertEqual(transport.offset, 0)
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.connected)
        self.assertFalse(transport.disconnecting)
        transport.write(b"queued")
        self.assertEqual(transport._tempDataBuffer, [b"queued"])
        for _ in range(200):
            if server.received:
                break
            await _later(0.01)
        self.assertEqual(b"".join(server.received), b"queued")
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(len(transport.dataBuffer), transport.offset)
        transport.loseConnection()
        self.assertTrue(transport.disconnecting)


def _later(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds)
