"""
Stopping a daemon's HTTP listener closes the connections it accepted, kept-alive ones too.

A listener that only closed its port left a client's persistent connection served by the
stopped daemon, whose thread pool and queues no longer answer: the client's next request
hung until its own timeout.  :class:`ConnectionsFactory` is tested in memory; the
:class:`ClosingListener` and a whole origin on real sockets (127.0.0.1, port 0) with a
client of the shared :class:`HTTPClientFactory` pool.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from kraken.config.loader import parse_config
from kraken.http.client import NO_RETRY, HTTPClientFactory, NetworkError, RequestTimeout
from kraken.services.origin import build_origin
from kraken.services.parts import ClosingListener, ConnectionsFactory

#: The client's timeout: a request to a stopped server must fail well before it.
CLIENT_TIMEOUT = 5.0
#: How long a request to a stopped server may take to fail (connection closed or refused).
PROMPT = 2.0


async def fails_promptly(case: TestCase, http: HTTPClientFactory, url: str) -> None:
    """A GET of ``url`` through ``http`` fails with a network error, not the timeout, at once."""
    start = reactor.seconds()
    try:
        response = await http.client().get(url, ok=range(100, 600))
    except NetworkError as e:
        case.assertNotIsInstance(e, RequestTimeout)
    else:
        case.fail(f"{url} answered {response.code} after the server stopped")
    case.assertLess(reactor.seconds() - start, PROMPT)


class Echo(Protocol):
    """Records what it receives and whether it lost its connection."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Note the loss."""
        self.lost = True


class ConnectionsFactoryTests(SynchronousTestCase):
    """The factory keeps the open connections and aborts them on request."""

    def connect(self, factory: ConnectionsFactory) -> tuple[Any, StringTransport]:
        """One connection of ``factory`` on a string transport."""
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_no_connection_closes_at_once(self) -> None:
        """With nothing open, close_connections has already fired."""
        factory = ConnectionsFactory(Factory.forProtocol(Echo))
        self.successResultOf(factory.close_connections())

    def test_aborts_every_connection_and_waits_for_their_loss(self) -> None:
        """Each open connection is aborted; the Deferred fires once the last one is lost."""
        factory = ConnectionsFactory(Factory.forProtocol(Echo))
        (first, t1), (second, t2) = self.connect(factory), self.connect(factory)
        echoes = [first.wrappedProtocol, second.wrappedProtocol]
        first.dataReceived(b"hi")
        self.assertEqual(echoes[0].received, [b"hi"])  # passed on
        closed = factory.close_connections()
        self.assertTrue(t1.disconnecting and t2.disconnecting)
        self.assertNoResult(closed)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(closed)
        second.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.assertEqual([e.lost for e in echoes], [True, True])
        self.assertEqual(factory.protocols, {})

    def test_lost_connections_are_forgotten(self) -> None:
        """A connection lost before the stop is not kept (nor aborted)."""
        factory = ConnectionsFactory(Factory.forProtocol(Echo))
        protocol, _ = self.connect(factory)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.protocols, {})
        self.successResultOf(factory.close_connections())


class Held(Resource):
    """``/ok`` answers at once; ``/hold`` is kept open until the test finishes it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        """OK, or hold the request."""
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        return b"OK\n"


class ClosingListenerSocketTests(TestCase):
    """A ClosingListener on a real port; clients share one persistent pool."""

    timeout = 30

    def client_factory(self) -> HTTPClientFactory:
        """The shared client pool (persistent connections), closed after the test."""
        http = HTTPClientFactory(reactor, timeout=CLIENT_TIMEOUT, retry=NO_RETRY)
        self.addCleanup(http.close)
        return http

    async def test_stop_closes_kept_alive_and_busy_connections(self) -> None:
        """
        Stopping closes the port, an idle kept-alive connection and one with a request in
        flight; it fires once they are gone, and the next request fails at once.
        """
        resource = Held()
        listener = ClosingListener(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Site(resource)
        )
        listener.startService()
        self.addCleanup(lambda: listener.running and listener.stopService())
        assert listener.port is not None
        url = f"http://127.0.0.1:{listener.port.getHost().port}"  # type: ignore[attr-defined]
        http = self.client_factory()
        busy = http.client().get(url + "/hold")
        while not resource.held:
            await deferLater(reactor, 0.01)
        response = await http.client().get(url + "/ok")  # a second connection, kept alive
        self.assertEqual(await response.content(), b"OK\n")
        self.assertEqual(len(listener.connections.protocols), 2)  # kept alive + busy
        gone = resource.held[0].notifyFinish()
        await listener.stopService()
        self.assertEqual(listener.connections.protocols, {})
        self.failureResultOf(gone)
        with self.assertRaises(NetworkError):
            await busy
        await fails_promptly(self, http, url + "/ok")


class StoppedOriginTests(TestCase):
    """An origin on real sockets stopped while a client keeps a connection to it."""

    timeout = 30

    async def test_kept_alive_client_fails_promptly_after_stop(self) -> None:
        """
        After the origin stops, the next request on the client's pool fails at once
        (connection closed or refused) instead of hanging on the stopped origin until the
        client's 5 s timeout, and the origin logs no error.
        """
        data_dir = os.path.abspath(self.mktemp())  # noqa: ASYNC240 - no I/O: a name
        config = parse_config(
            "origin",
            {
                "data_dir": data_dir,
                "server": {"listen": "tcp:0:interface=127.0.0.1", "advertise": "127.0.0.1:1"},
                "peer": {"listen": "tcp:0:interface=127.0.0.1", "advertise": "127.0.0.1:2"},
                "cluster": {"static": ["127.0.0.1:1"]},  # alone: never probed
            },
        )
        origin = build_origin(config, reactor)
        origin.startService()
        self.addCleanup(lambda: origin.running and origin.stopService())
        [listener] = [s for s in origin if isinstance(s, ClosingListener)]
        assert listener.port is not None
        url = f"http://127.0.0.1:{listener.port.getHost().port}/readiness"  # type: ignore[attr-defined]
        http = HTTPClientFactory(reactor, timeout=CLIENT_TIMEOUT, retry=NO_RETRY)
        self.addCleanup(http.close)
        response = await http.client().get(url)
        self.assertEqual(await response.content(), b"OK\n")
        self.assertEqual(len(listener.connections.protocols), 1)  # kept alive
        await origin.stopService()
        self.assertEqual(listener.connections.protocols, {})
        await fails_promptly(self, http, url)
        self.assertEqual(self.flushLoggedErrors(), [])
