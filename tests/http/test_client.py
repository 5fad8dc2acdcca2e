"""Tests for kraken.http.client: the one inter-component HTTP client."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import error as web_error
from twisted.web.client import (
    BrowserLikePolicyForHTTPS,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.http.client import (
    NO_RETRY,
    BodyTooLarge,
    HTTPClientFactory,
    HTTPStatusError,
    NetworkError,
    RequestTimeout,
    RetryPolicy,
    collect_body,
    is_network_failure,
    read_body,
    save_body,
)
from kraken.http.testing import HostRoutingAgent, memory_client_factory

HOST = "origin1:15002"
URL = f"http://{HOST}/blobs"


class Scripted(Resource):
    """Answers each request with the next (status, body) of a script; the last one repeats."""

    isLeaf = True

    def __init__(self, *script: tuple[int, bytes]) -> None:
        super().__init__()
        self.script = list(script) or [(200, b"ok")]
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((request.method, request.uri, request.content.read()))
        status, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        request.setResponseCode(status)
        if status in (301, 302, 307):
            request.setHeader(b"Location", b"/moved")
        return body


class Hanging(Resource):
    """Never answers: keeps each request open until the test finishes it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []

    def render(self, request: Request) -> Any:
        self.pending.append(request)
        return NOT_DONE_YET


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    """A client TLS policy that records the hosts it was asked about."""

    def __init__(self) -> None:
        self.netlocs: list[tuple[bytes, int]] = []
        self._real = BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.netlocs.append((hostname, port))
        return self._real.creatorForNetloc(hostname, port)


@implementer(IBodyProducer)
class OnceProducer:
    """A body producer that can be used once."""

    length = 4

    def __init__(self) -> None:
        self.started = 0

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.started += 1
        consumer.write(b"once")
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ClientTestCase(SynchronousTestCase):
    """Builds a client over an in-memory origin and a Clock."""

    def make(self, resource: Resource, **kwargs: Any) -> None:
        self.clock = Clock()
        self.factory, self.agent = memory_client_factory({HOST: resource}, self.clock, **kwargs)
        self.client = self.factory.client()


class SuccessAndStatusTests(ClientTestCase):
    """Accepted statuses come back as responses; others raise HTTPStatusError."""

    def test_ok_response(self) -> None:
        """A 200 fires with the response, whose body can be read."""
        self.make(Scripted((200, b"hello")))
        response = self.successResultOf(self.client.get(URL))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"hello")
        self.assertEqual(self.clock.getDelayedCalls(), [], "timeout timer left behind")

    def test_status_error(self) -> None:
        """A 404 raises HTTPStatusError with status, body, URL and method; it is not retried."""
        origin = Scripted((404, b"blob not found"))
        self.make(origin)
        failure = self.failureResultOf(self.client.get(URL), HTTPStatusError)
        self.assertEqual(
            (failure.value.status, failure.value.body, failure.value.url, failure.value.method),
            (404, b"blob not found", URL, "GET"),
        )
        self.assertFalse(failure.value.retryable)
        self.assertNotIsInstance(failure.value, NetworkError)
        self.assertIn("404", str(failure.value))
        self.assertEqual(len(origin.seen), 1)

    def test_accepted_codes(self) -> None:
        """Codes listed in ``ok`` are returned, and then 200 is not accepted unless listed."""
        self.make(Scripted((204, b""), (200, b"")))
        response = self.successResultOf(self.client.head(URL, ok=(200, 204)))
        self.assertEqual(response.code, 204)
        self.failureResultOf(self.client.get(URL, ok=(201,)), HTTPStatusError)

    def test_methods_body_params_headers(self) -> None:
        """Shorthands send their method, the bytes body, query params and headers."""
        origin = Scripted((201, b""))
        self.make(origin)
        for send, method in [
            (self.client.post, b"POST"),
            (self.client.put, b"PUT"),
            (self.client.patch, b"PATCH"),
            (self.client.delete, b"DELETE"),
        ]:
            self.successResultOf(
                send(URL, data=b"payload", params={"a": "1"}, headers={"X-K": "v"}, ok=(201,))
            )
            self.assertEqual(origin.seen[-1], (method, b"/blobs?a=1", b"payload"))
        sent_headers = self.agent.requests[-1].headers
        assert sent_headers is not None
        self.assertEqual(sent_headers.getRawHeaders(b"x-k"), [b"v"])

    def test_error_body_is_bounded(self) -> None:
        """Only max_error_body bytes of an error body are kept."""
        self.clock = Clock()
        agent = HostRoutingAgent({HOST: Scripted((500, b"x" * 100_000))})
        client = HTTPClientFactory(self.clock, agent=agent, max_error_body=1000).client()
        failure = self.failureResultOf(client.get(URL), HTTPStatusError)
        self.assertEqual(failure.value.body, b"x" * 1000)

    def test_redirect_followed_for_get(self) -> None:
        """GET follows a redirect; with follow_redirects=False the 302 is a status error."""
        origin = Scripted((302, b""), (200, b"there"))
        self.make(origin)
        response = self.successResultOf(self.client.get(URL))
        self.assertEqual(self.successResultOf(response.content()), b"there")
        self.assertEqual(origin.seen[-1][1], b"/moved")
        origin.script = [(302, b"")]
        failure = self.failureResultOf(
            self.client.get(URL, follow_redirects=False), HTTPStatusError
        )
        self.assertEqual(failure.value.status, 302)

    def test_redirect_of_post_is_a_status(self) -> None:
        """A 307 answer to POST is an HTTPStatusError (not a network error) and not followed."""
        origin = Scripted((307, b""))
        self.make(origin)
        failure = self.failureResultOf(self.client.post(URL, data=b"x"), HTTPStatusError)
        self.assertEqual(failure.value.status, 307)
        self.assertEqual(len(origin.seen), 1)


class RetryTests(ClientTestCase):
    """Retries with backoff on retryable statuses and network errors."""

    def test_retry_then_success(self) -> None:
        """Two 503s then 200: the default policy waits 250 ms before each retry and succeeds."""
        origin = Scripted((503, b"busy"), (503, b"busy"), (200, b"ok"))
        self.make(origin)
        d = self.client.get(URL)
        self.assertNoResult(d)
        self.assertEqual(len(origin.seen), 1)
        self.clock.advance(0.249)
        self.assertEqual(len(origin.seen), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(origin.seen), 2)
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(origin.seen), 3)

    def test_retries_exhausted(self) -> None:
        """Every retryable status (429/502/503/504) gets 3 attempts, then the last error."""
        for status in (429, 502, 503, 504):
            origin = Scripted((status, b"nope"))
            self.make(origin)
            d = self.client.get(URL)
            self.clock.advance(0.25)
            self.clock.advance(0.25)
            failure = self.failureResultOf(d, HTTPStatusError)
            self.assertEqual(failure.value.status, status)
            self.assertTrue(failure.value.retryable)
            self.assertEqual(len(origin.seen), 3)
            self.clock.advance(10)
            self.assertEqual(len(origin.seen), 3)

    def test_exponential_backoff(self) -> None:
        """Backoff grows by the multiplier and stops at max_backoff: 1 s, 2 s, then 3 s."""
        origin = Scripted((503, b""))
        self.make(
            origin,
            retry=RetryPolicy(max_retries=3, initial_backoff=1.0, multiplier=2.0, max_backoff=3.0),
        )
        d = self.client.get(URL)
        for wait, expected_hits in [(0.99, 1), (0.01, 2), (1.99, 2), (0.01, 3), (2.99, 3)]:
            self.clock.advance(wait)
            self.assertEqual(len(origin.seen), expected_hits)
            self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(len(origin.seen), 4)
        self.failureResultOf(d, HTTPStatusError)

    def test_network_error_retried(self) -> None:
        """A refused connection is retried; when the host comes back the request succeeds."""
        self.make(Scripted())
        self.agent.remove(HOST)
        d = self.client.get(URL)
        self.assertNoResult(d)
        self.agent.add(HOST, Scripted((200, b"back")))
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(self.successResultOf(d).content()), b"back")
        self.assertEqual(len(self.agent.requests), 2)

    def test_network_error_raised(self) -> None:
        """After the retries a refused connection is a NetworkError naming URL and reason."""
        self.make(Scripted())
        self.agent.remove(HOST)
        d = self.client.put(URL, data=b"x")
        self.clock.advance(0.25)
        self.clock.advance(0.25)
        failure = self.failureResultOf(d, NetworkError)
        self.assertNotIsInstance(failure.value, HTTPStatusError)
        self.assertEqual((failure.value.url, failure.value.method), (URL, "PUT"))
        self.assertIn("ConnectionRefusedError", failure.value.reason)
        self.assertIsInstance(failure.value.__cause__, ConnectionRefusedError)
        self.assertEqual(len(self.agent.requests), 3)

    def test_retry_disabled(self) -> None:
        """retry=False, NO_RETRY and a non-retryable status each make a single attempt."""
        origin = Scripted((503, b""))
        self.make(origin)
        self.failureResultOf(self.client.get(URL, retry=False), HTTPStatusError)
        self.failureResultOf(self.factory.client(retry=NO_RETRY).get(URL), HTTPStatusError)
        self.assertEqual(len(origin.seen), 2)

    def test_bytes_body_resent(self) -> None:
        """A bytes body is sent again, whole, on each attempt."""
        origin = Scripted((502, b""), (200, b""))
        self.make(origin)
        d = self.client.post(URL, data=b"blob bytes")
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.assertEqual([body for _, _, body in origin.seen], [b"blob bytes", b"blob bytes"])

    def test_producer_body_not_retried(self) -> None:
        """A body producer is consumed once, so its request is not retried."""
        origin = Scripted((503, b""))
        self.make(origin)
        producer = OnceProducer()
        self.failureResultOf(self.client.put(URL, data=producer), HTTPStatusError)
        self.assertEqual(len(origin.seen), 1)
        self.assertEqual(producer.started, 1)
        self.assertEqual(origin.seen[0][2], b"once")

    def test_cancel_during_backoff(self) -> None:
        """Cancelling during the backoff stops the request: no further attempt is made."""
        origin = Scripted((503, b""))
        self.make(origin)
        d = self.client.get(URL)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(10)
        self.assertEqual(len(origin.seen), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_policy_validation(self) -> None:
        """RetryPolicy refuses negative retries or backoff and shrinking multipliers."""
        cases: list[dict[str, Any]] = [
            {"max_retries": -1},
            {"initial_backoff": -0.1},
            {"multiplier": 0.5},
            {"max_backoff": -1.0},
        ]
        for bad in cases:
            self.assertRaises(ValueError, RetryPolicy, **bad)
        policy = RetryPolicy()
        self.assertEqual([policy.backoff(n) for n in range(3)], [0.25, 0.25, 0.25])


class TimeoutTests(ClientTestCase):
    """Timeouts are measured with the injected reactor, per attempt."""

    def test_timeout(self) -> None:
        """No answer within the timeout is a RequestTimeout, which is a NetworkError."""
        self.make(Hanging(), timeout=5.0, retry=NO_RETRY)
        d = self.client.get(URL)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, RequestTimeout)
        self.assertIsInstance(failure.value, NetworkError)
        self.assertEqual(failure.value.timeout, 5.0)
        self.assertIn("timed out after 5s", str(failure.value))

    def test_default_timeout_is_60s(self) -> None:
        """Without a timeout setting an attempt gives up after 60 s."""
        self.make(Hanging(), retry=NO_RETRY)
        d = self.client.get(URL)
        self.clock.advance(59.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, RequestTimeout)

    def test_timeout_per_attempt_and_retried(self) -> None:
        """Each attempt has its own timeout, and a timed-out attempt is retried."""
        hanging = Hanging()
        self.make(hanging, timeout=5.0)
        d = self.client.get(URL, timeout=2.0)
        self.clock.advance(2.0)
        self.assertEqual(len(hanging.pending), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(hanging.pending), 2)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        request = hanging.pending[-1]
        request.write(b"late but in time")
        request.finish()
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(response.content()), b"late but in time")

    def test_caller_cancel_is_not_timeout(self) -> None:
        """Cancelling a pending request gives CancelledError, not RequestTimeout."""
        self.make(Hanging())
        d = self.client.get(URL)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TLSTests(SynchronousTestCase):
    """With a TLS policy every http:// URL becomes https://."""

    def test_rewrites_http_to_https(self) -> None:
        """http:// URLs are sent as https:// when tls is set; https:// ones are unchanged."""
        factory, agent = memory_client_factory({HOST: Scripted()}, Clock(), tls=RecordingPolicy())
        client = factory.client()
        self.successResultOf(client.get(URL))
        self.successResultOf(client.get(f"https://{HOST}/x"))
        self.assertEqual(
            [r.url for r in agent.requests], [f"https://{HOST}/blobs", f"https://{HOST}/x"]
        )
        self.assertEqual(client.url_for("http://a:1/p?q=http://b"), "https://a:1/p?q=http://b")

    def test_no_rewrite_without_tls(self) -> None:
        """Without tls, http:// URLs stay plain."""
        factory, agent = memory_client_factory({HOST: Scripted()}, Clock())
        self.successResultOf(factory.client().get(URL))
        self.assertEqual(agent.requests[0].url, URL)

    def test_pooled_agent_uses_policy(self) -> None:
        """The factory's own Agent uses the TLS policy and its single persistent pool."""
        reactor = MemoryReactorClock()
        policy = RecordingPolicy()
        verifyObject(IPolicyForHTTPS, policy)
        factory = HTTPClientFactory(reactor, tls=policy)
        self.assertTrue(factory.pool.persistent)
        self.assertEqual(factory.pool.maxPersistentPerHost, 10)
        d = factory.client().get("http://127.0.0.1:15002/health")
        self.assertEqual(policy.netlocs, [(b"127.0.0.1", 15002)])
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 15002))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.successResultOf(factory.close())


class PoolClosingTests(SynchronousTestCase):
    """close() leaves no pooled connection behind, even for a request still in flight."""

    def connect(self) -> tuple[HTTPClientFactory, MemoryReactorClock, Deferred[Any], Any]:
        """A GET over the factory's own pooled Agent, connected to a string transport."""
        reactor = MemoryReactorClock()
        factory = HTTPClientFactory(reactor)
        d = factory.client().get("http://127.0.0.1:15002/health", retry=False)
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"GET /health HTTP/1.1"))
        return factory, reactor, d, (protocol, transport)

    def answer(self, d: Deferred[Any], protocol: Any) -> None:
        """Answer the request with a 2-byte body and read it."""
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        self.assertEqual(self.successResultOf(read_body(self.successResultOf(d), 10)), b"OK")

    def test_finished_after_close_is_not_pooled(self) -> None:
        """A request answered after close() has its connection closed, with no pool timer left."""
        factory, reactor, d, (protocol, transport) = self.connect()
        self.successResultOf(factory.close())
        self.answer(d, protocol)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])

    def test_pooled_before_close(self) -> None:
        """Before close() a finished request's connection is kept for reuse (the control case)."""
        factory, reactor, d, (protocol, transport) = self.connect()
        self.answer(d, protocol)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len([c for c in reactor.getDelayedCalls() if c.active()]), 1)
        closed = factory.close()
        protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(closed)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])


class NetworkFailureClassificationTests(SynchronousTestCase):
    """is_network_failure separates transport failures from HTTP-level ones."""

    def test_network(self) -> None:
        """Refusals, DNS failures, lost connections and never-received responses count."""
        for exc in [
            ConnectionRefusedError(),
            DNSLookupError("nope"),
            ResponseNeverReceived([Failure(ConnectionLost())]),
            ResponseFailed([Failure(ConnectionLost())]),
            ConnectionLost(),
        ]:
            self.assertTrue(is_network_failure(exc), exc)

    def test_not_network(self) -> None:
        """Redirect refusals and programming errors do not count."""
        redirect = web_error.PageRedirect(b"307", location=b"/x")
        for exc in [ResponseFailed([Failure(redirect)]), redirect, ValueError("bad url")]:
            self.assertFalse(is_network_failure(exc), exc)


class BodyStreamingTests(ClientTestCase):
    """Large bodies stream to a collector or file chunk by chunk."""

    def test_collect_streams_chunks(self) -> None:
        """collect_body hands every byte to the collector and fires with the length."""
        hanging = Hanging()
        self.make(hanging)
        d = self.client.get(URL)
        request = hanging.pending[0]
        request.write(b"a" * 10)
        self.agent.flush()
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done = collect_body(response, chunks.append)
        self.assertNoResult(done)
        self.assertEqual(b"".join(chunks), b"a" * 10)
        request.write(b"b" * 5)
        request.finish()
        self.agent.flush()
        self.assertEqual(self.successResultOf(done), 15)
        self.assertEqual(b"".join(chunks), b"a" * 10 + b"b" * 5)

    def test_save_body(self) -> None:
        """save_body writes the body into a file."""
        self.make(Scripted((200, b"blob content")))
        response = self.successResultOf(self.client.get(URL))
        out = io.BytesIO()
        self.assertEqual(self.successResultOf(save_body(response, out)), 12)
        self.assertEqual(out.getvalue(), b"blob content")

    def test_limit(self) -> None:
        """Past max_bytes, collect_body and read_body fail with BodyTooLarge."""
        self.make(Scripted((200, b"x" * 100)))
        response = self.successResultOf(self.client.get(URL))
        self.failureResultOf(collect_body(response, lambda _: None, max_bytes=99), BodyTooLarge)
        response = self.successResultOf(self.client.get(URL))
        self.failureResultOf(read_body(response, 50), BodyTooLarge)
        response = self.successResultOf(self.client.get(URL))
        self.assertEqual(self.successResultOf(read_body(response, 100)), b"x" * 100)

    def test_collector_error(self) -> None:
        """An exception from the collector fails the collection."""
        self.make(Scripted((200, b"data")))
        response = self.successResultOf(self.client.get(URL))

        def broken(data: bytes) -> None:
            raise OSError("disk full")

        failure = self.failureResultOf(collect_body(response, broken), OSError)
        self.assertIn("disk full", str(failure.value))

    def test_cancel(self) -> None:
        """Cancelling a collection fails it with CancelledError and ignores later data."""
        hanging = Hanging()
        self.make(hanging)
        d = self.client.get(URL)
        request = hanging.pending[0]
        request.write(b"part")
        self.agent.flush()
        chunks: list[bytes] = []
        done = collect_body(self.successResultOf(d), chunks.append)
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertEqual(chunks, [b"part"])
