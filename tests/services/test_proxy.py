"""
The proxy daemon built by makeService: option parsing, the service tree, the TLS-hello guard.
"""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.static import Data

from kraken.cluster import Membership
from kraken.config.loader import parse_config
from kraken.services.proxy import Options, ProxyService, build_proxy, makeService, refuse_tls


class OptionsTests(SynchronousTestCase):
    """Command line and service tree, without sockets."""

    def test_defaults(self) -> None:
        """With no config the proxy builds its tree: memberships, expiry timer, one listener."""
        options = Options()
        options.parseOptions([])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, ProxyService)
        kinds = [type(s) for s in service]
        self.assertEqual(kinds.count(Membership), 2)
        self.assertIn(TimerService, kinds)
        self.assertEqual(kinds.count(StreamServerEndpointService), 1)
        self.assertTrue(os.path.isdir(os.path.join("kraken-data", "proxy", "store")))

    def test_listens_on_15000(self) -> None:
        """Started on a memory reactor, the default proxy listens on 127.0.0.1:15000."""
        fake = MemoryReactorClock()
        config = parse_config("proxy", {"data_dir": self.mktemp(), "cleanup": {"enabled": False}})
        service = build_proxy(config, fake)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(p, i) for p, _, _, i in fake.tcpServers], [(15000, "127.0.0.1")])

    def test_listen_override(self) -> None:
        """--listen replaces server.listen."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("cleanup: {enabled: false}\n")
        options = Options()
        options.parseOptions(["--config", path, "--listen", "tcp:15999:interface=127.0.0.1"])
        fake = MemoryReactorClock()
        service = makeService(options, fake)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([p for p, *_ in fake.tcpServers], [15999])

    def test_bad_config_is_usage_error(self) -> None:
        """An unknown key stops twistd with a message naming it."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("no_such_key: 1\n")
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--config", path])
        self.assertIn("no_such_key", str(e.exception))


class RefuseTLSTests(SynchronousTestCase):
    """The plain-HTTP port drops TLS handshakes at once and serves HTTP as usual."""

    def connect(self) -> tuple[object, StringTransport]:
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
        """A first byte 0x16 gets a 400 and the connection is closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01")  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 400"))

    def test_http_served(self) -> None:
        """An ordinary request is answered by the site."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[attr-defined]
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"hello", transport.value())
