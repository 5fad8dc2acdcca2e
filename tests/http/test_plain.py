"""Tests for kraken.http.plain: a plain-HTTP port that turns TLS handshakes away at once."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.static import Data

from kraken.http.plain import TLS_ANSWER, refuse_tls

CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"
"""The start of a TLS ClientHello record."""


def answer_to_tls_hello(factory: Factory) -> tuple[bytes, bool]:
    """What a listener's protocol writes to a TLS ClientHello, and whether it then closes.

    For the daemons' listener tests; the connection is lost at the end, so an HTTP
    channel's idle timer on the global reactor does not outlive the test.
    """
    protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    try:
        protocol.dataReceived(CLIENT_HELLO)
        return transport.value(), transport.disconnecting
    finally:
        protocol.connectionLost(Failure(ConnectionDone()))


class RefuseTLSTests(SynchronousTestCase):
    """The plain-HTTP port drops TLS handshakes at once and serves HTTP as usual."""

    def connect(self) -> tuple[Any, StringTransport]:
        """A protocol of the wrapped site on a string transport."""
        resource = Data(b"hello", "text/plain")  # type: ignore[no-untyped-call]
        resource.isLeaf = True
        # The site's idle timeouts go on a Clock: on the global reactor they would outlive
        # this synchronous test and make the next reactor-based test fail as unclean.
        factory = refuse_tls(Site(resource, reactor=Clock()))  # type: ignore[no-untyped-call]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_tls_hello_closed(self) -> None:
        """A first byte 0x16 (a TLS handshake record) gets a plain 400 and the connection closes."""
        protocol, transport = self.connect()
        protocol.dataReceived(CLIENT_HELLO)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), TLS_ANSWER)
        self.assertTrue(TLS_ANSWER.startswith(b"HTTP/1.0 400"))

    def test_helper_sees_a_plain_site_wait(self) -> None:
        """answer_to_tls_hello tells a bare Site (silent, open) from a guarded one (400, closed)."""
        resource = Data(b"hello", "text/plain")  # type: ignore[no-untyped-call]
        site = Site(resource, reactor=Clock())  # type: ignore[no-untyped-call]
        self.assertEqual(answer_to_tls_hello(site), (b"", False))
        self.assertEqual(answer_to_tls_hello(refuse_tls(site)), (TLS_ANSWER, True))

    def test_http_served(self) -> None:
        """An ordinary request is answered by the site."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"hello", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_only_the_first_byte_counts(self) -> None:
        """A request split over reads is served; 0x16 later in a connection is just data."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"G")
        protocol.dataReceived(b"ET / HTTP/1.1\r\nHost: x\r\nX-Bin: \x16\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertFalse(transport.disconnecting)
