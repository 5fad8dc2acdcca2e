"""
Mutual TLS on real sockets on 127.0.0.1: a guarded Site behind ClusterTLS.server_endpoint, called
through kraken.http's HTTPClientFactory with ClusterTLS.client_policy (as the daemons do).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from kraken.http.client import NO_RETRY, HTTPClientFactory, HTTPStatusError, NetworkError, read_body
from kraken.tls import ClusterTLS

from .pki import TestPKI
from .test_memory import Recorder


class SocketTLSTests(TestCase):
    """The same rules as in memory, through the real reactor, TCP and the HTTP client."""

    def setUp(self) -> None:
        self.pki = TestPKI(self.mktemp())
        self.resource = Recorder()

    async def serve(self, server: ClusterTLS) -> int:
        """Listen on 127.0.0.1 with ``server``'s TLS; return the port."""
        site = Site(server.guard(self.resource))
        endpoint = server.server_endpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), reactor
        )
        port: Any = await endpoint.listen(site)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def client(self, tls: ClusterTLS) -> Any:
        """A one-attempt client of the HTTP client factory with ``tls``'s client policy."""
        factory = HTTPClientFactory(reactor, tls=tls.client_policy(), timeout=10, retry=NO_RETRY)
        self.addCleanup(factory.close)
        return factory.client()

    async def test_anonymous_read_and_forbidden_write(self) -> None:
        """No client certificate: GET over https works, PUT and POST get 403 with the reason."""
        port = await self.serve(self.pki.server_tls())
        client = self.client(self.pki.client_tls(None))
        response = await client.get(f"http://127.0.0.1:{port}/blob")
        self.assertEqual(await read_body(response, 100), b"ok GET")
        for method in ("PUT", "POST"):
            with self.assertRaises(HTTPStatusError) as raised:
                await client.request(method, f"http://localhost:{port}/blob", data=b"x")
            self.assertEqual(raised.exception.status, 403)
            self.assertIn(b"client certificate", raised.exception.body)
        self.assertEqual(self.resource.methods, [b"GET"])

    async def test_certified_write(self) -> None:
        """A client certificate from the cluster CA makes PUT succeed."""
        port = await self.serve(self.pki.server_tls())
        client = self.client(self.pki.client_tls())
        response = await client.put(f"http://127.0.0.1:{port}/blob", data=b"x")
        self.assertEqual(await read_body(response, 100), b"ok PUT")

    async def test_other_ca_refused(self) -> None:
        """A client certificate from another CA: the connection fails, nothing is served."""
        self.pki.issue("client", stranger=True)
        port = await self.serve(self.pki.server_tls())
        client = self.client(self.pki.client_tls())
        with self.assertRaises(NetworkError):
            await client.get(f"http://127.0.0.1:{port}/blob")
        self.assertEqual(self.resource.methods, [])

    async def test_expired_refused(self) -> None:
        """An expired client certificate: the connection fails, nothing is served."""
        self.pki.issue("client", expired=True)
        port = await self.serve(self.pki.server_tls())
        client = self.client(self.pki.client_tls())
        with self.assertRaises(NetworkError):
            await client.put(f"http://127.0.0.1:{port}/blob", data=b"x")
        self.assertEqual(self.resource.methods, [])

    async def test_server_name_mismatch_refused(self) -> None:
        """The client refuses a server whose certificate does not name the address called."""
        self.pki.issue("server", ["origin.example"])
        port = await self.serve(self.pki.server_tls())
        client = self.client(self.pki.client_tls())
        with self.assertRaises(NetworkError) as raised:
            await client.get(f"http://127.0.0.1:{port}/blob")
        self.assertIn("VerificationError", raised.exception.reason)
        self.assertEqual(self.resource.methods, [])
