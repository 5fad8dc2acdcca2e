"""
Mutual TLS in memory: a Site behind kraken.tls's server context and guard, talked to over
TLSMemoryBIOProtocol pairs pumped by iosim, with certificates made for each test.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import HTTP11ClientProtocol, Request, ResponseNeverReceived
from twisted.web.client import ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from kraken.tls import ClusterTLS

from .pki import TestPKI


class Recorder(Resource):
    """A leaf resource answering ``ok <METHOD>`` and remembering which methods reached it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.methods: list[bytes] = []

    def render(self, request: Any) -> bytes:
        """Record and answer."""
        self.methods.append(request.method)
        return b"ok " + request.method


class Exchange:
    """One TLS connection in memory between a guarded Site and an HTTP/1.1 client."""

    def __init__(
        self, server: ClusterTLS, client: IPolicyForHTTPS, host: bytes = b"localhost"
    ) -> None:
        self.clock = Clock()
        self.resource = Recorder()
        site = Site(server.guard(self.resource), reactor=self.clock)
        server_factory = TLSMemoryBIOFactory(server.server_options(), False, site, self.clock)
        server_protocol = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        client_factory = TLSMemoryBIOFactory(
            client.creatorForNetloc(host, 443),
            True,
            Factory.forProtocol(HTTP11ClientProtocol),
            self.clock,
        )
        self.client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 443))
        self.host = host
        self.pump = iosim.connect(
            server_protocol,
            iosim.makeFakeServer(server_protocol),
            self.client,
            iosim.makeFakeClient(self.client),
            greet=False,
            clock=self.clock,
        )

    def request(self, method: bytes) -> Deferred[IResponse]:
        """Send ``method /blob`` (no body) and pump until nothing moves."""
        headers = Headers({b"host": [self.host]})
        d: Deferred[IResponse] = self.client.wrappedProtocol.request(
            Request(method, b"/blob", headers, None, persistent=True)
        )
        self.pump.flush()
        return d

    def body(self, response: IResponse) -> bytes:
        """The whole body of ``response``."""
        d = readBody(response)
        self.pump.flush()
        result: list[bytes] = []
        d.addCallback(result.append)
        return result[0]


class MemoryTLSTests(SynchronousTestCase):
    """The server's guard and context and the client's policy, without sockets."""

    def setUp(self) -> None:
        self.pki = TestPKI(self.mktemp())

    def answer(self, exchange: Exchange, method: bytes) -> tuple[int, bytes]:
        """Status and body of ``method`` over ``exchange``; fails the test if no answer."""
        response = self.successResultOf(exchange.request(method))
        return response.code, exchange.body(response)

    def refused(self, exchange: Exchange, method: bytes = b"GET") -> Failure:
        """The failure of a request whose TLS handshake one side refused."""
        failure = self.failureResultOf(
            exchange.request(method), ResponseNeverReceived, ResponseFailed
        )
        reasons = failure.value.reasons
        self.assertTrue(
            any(r.check(SSL.Error, VerificationError) for r in reasons),
            f"not a TLS failure: {reasons}",
        )
        self.assertEqual(exchange.resource.methods, [])
        return failure

    def test_policy_provides_interface(self) -> None:
        """The client policy is an IPolicyForHTTPS for the HTTP client factory."""
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.assertTrue(verifyObject(IPolicyForHTTPS, policy))

    def test_anonymous_reads_pass_writes_forbidden(self) -> None:
        """Without a client certificate GET and HEAD pass; PUT, POST, PATCH, DELETE get 403."""
        server = self.pki.server_tls()
        policy = self.pki.client_tls(None).client_policy()
        assert policy is not None
        exchange = Exchange(server, policy)
        self.assertEqual(self.answer(exchange, b"GET"), (200, b"ok GET"))
        self.assertEqual(self.answer(exchange, b"HEAD")[0], 200)
        for method in (b"PUT", b"POST", b"PATCH", b"DELETE"):
            code, body = self.answer(exchange, method)
            self.assertEqual(code, 403, method)
            self.assertIn(b"client certificate signed by the cluster CA", body)
            self.assertIn(b"no client certificate", body)
        self.assertEqual(exchange.resource.methods, [b"GET", b"HEAD"])

    def test_client_certificate_allows_writes(self) -> None:
        """A client certificate signed by the cluster CA lets writes through."""
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        exchange = Exchange(self.pki.server_tls(), policy)
        self.assertEqual(self.answer(exchange, b"PUT"), (200, b"ok PUT"))
        self.assertEqual(self.answer(exchange, b"POST"), (200, b"ok POST"))
        self.assertEqual(exchange.resource.methods, [b"PUT", b"POST"])

    def test_reads_need_certificate_when_configured(self) -> None:
        """With require_client_cert_for_reads, an anonymous GET gets 403 and a certified one 200."""
        server = self.pki.server_tls(require_client_cert_for_reads=True)
        anonymous = self.pki.client_tls(None).client_policy()
        certified = self.pki.client_tls().client_policy()
        assert anonymous is not None and certified is not None
        self.assertEqual(self.answer(Exchange(server, anonymous), b"GET")[0], 403)
        self.assertEqual(self.answer(Exchange(server, certified), b"GET"), (200, b"ok GET"))

    def test_writes_open_when_not_required(self) -> None:
        """require_client_cert_for_writes off (a config may say so): anonymous PUTs pass."""
        server = self.pki.server_tls(require_client_cert_for_writes=False)
        policy = self.pki.client_tls(None).client_policy()
        assert policy is not None
        self.assertEqual(self.answer(Exchange(server, policy), b"PUT"), (200, b"ok PUT"))

    def test_client_certificate_of_other_ca_refused(self) -> None:
        """A client certificate signed by another CA fails the handshake; nothing is served."""
        self.pki.issue("client", stranger=True)
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.refused(Exchange(self.pki.server_tls(), policy))

    def test_expired_client_certificate_refused(self) -> None:
        """An expired client certificate from the cluster CA fails the handshake."""
        self.pki.issue("client", expired=True)
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.refused(Exchange(self.pki.server_tls(), policy), b"PUT")

    def test_server_name_mismatch_refused(self) -> None:
        """The client refuses a server whose certificate does not name the host it called."""
        self.pki.issue("server", ["origin.example"])
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.refused(Exchange(self.pki.server_tls(), policy, host=b"localhost"))

    def test_server_name_override(self) -> None:
        """With server_name set, that name is checked instead of the host called."""
        self.pki.issue("server", ["kraken"])
        server = self.pki.server_tls()
        named = self.pki.client_tls(server_name="kraken").client_policy()
        assert named is not None
        self.assertEqual(self.answer(Exchange(server, named, host=b"127.0.0.1"), b"PUT")[0], 200)
        wrong = self.pki.client_tls(server_name="tracker").client_policy()
        assert wrong is not None
        self.refused(Exchange(server, wrong, host=b"127.0.0.1"))

    def test_ip_address_checked(self) -> None:
        """Calling 127.0.0.1 checks the certificate's IP address names (default SANs pass)."""
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        exchange = Exchange(self.pki.server_tls(), policy, host=b"127.0.0.1")
        self.assertEqual(self.answer(exchange, b"GET")[0], 200)
        self.pki.issue("other", ["localhost"])
        self.refused(Exchange(self.pki.server_tls("other"), policy, host=b"127.0.0.1"))

    def test_server_of_other_ca_refused(self) -> None:
        """The client trusts only the cluster CA: a server certificate of another CA is refused."""
        self.pki.issue("server", stranger=True)
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.refused(Exchange(self.pki.server_tls(), policy))

    def test_expired_server_refused(self) -> None:
        """The client refuses an expired server certificate."""
        self.pki.issue("server", expired=True)
        policy = self.pki.client_tls().client_policy()
        assert policy is not None
        self.refused(Exchange(self.pki.server_tls(), policy))

    def test_old_protocols_disabled(self) -> None:
        """Both contexts refuse TLS 1.0 and 1.1."""
        server_context = self.pki.server_tls().server_options().getContext()
        flags = SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
        self.assertEqual(server_context.set_options(0) & flags, flags)
