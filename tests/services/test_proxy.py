"""
The proxy daemon built by makeService: option parsing, the service tree, the TLS-hello guard.
"""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kraken.cluster import Membership
from kraken.config.loader import parse_config
from kraken.http.server import TLS_ANSWER
from kraken.services.parts import ClosingListener
from kraken.services.proxy import Options, ProxyService, build_proxy, makeService
from tests.http.test_server import answer_to_tls_hello


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
        self.assertEqual(kinds.count(ClosingListener), 1)
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


class DependencyTests(SynchronousTestCase):
    """The proxy's tree keeps the origin ring and the build-index out of its readiness."""

    def test_dependencies_not_readiness(self) -> None:
        """/readiness has no checks of other components; /dependencies and a timer have them."""
        config = parse_config("proxy", {"data_dir": self.mktemp(), "cleanup": {"enabled": False}})
        service = build_proxy(config, MemoryReactorClock())
        self.assertEqual(service.api.readiness_checks, ())
        assert service.api.dependencies is not None
        names = [name for name, _ in service.api.dependencies.checks]
        self.assertEqual(names, ["origin", "build-index"])
        timers = [s for s in service if isinstance(s, TimerService)]
        self.assertIn(service.api.dependencies.interval, [t.step for t in timers])


class RefuseTLSTests(SynchronousTestCase):
    """The proxy's registry port turns a TLS ClientHello away at once (kraken.http.server)."""

    def test_listener_refuses_tls(self) -> None:
        """The listener answers a ClientHello with a plain 400 and closes."""
        config = parse_config("proxy", {"data_dir": self.mktemp(), "cleanup": {"enabled": False}})
        service = build_proxy(config, MemoryReactorClock())
        [listener] = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(answer_to_tls_hello(listener.factory), (TLS_ANSWER, True))
