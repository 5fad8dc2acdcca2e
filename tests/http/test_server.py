"""
kraken.http.server in memory: decisions on a request's head, the header deadline, TLS refusal,
streamed bodies with back-pressure, and the HTTPChannel internals the module relies on.
"""

from __future__ import annotations

import io
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel, Request
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from kraken.http.errors import APIError
from kraken.http.server import (
    TLS_ANSWER,
    BodyPlan,
    KleinRoutes,
    KrakenSite,
    RequestHead,
    ServerLimits,
    StreamingSink,
    body_sink,
    read_only,
)
from kraken.io.runner import run_inline

CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"
"""The start of a TLS ClientHello record."""


def answer_to_tls_hello(factory: Any) -> tuple[bytes, bool]:
    """What a listener's protocol writes to a TLS ClientHello, and whether it then closes.

    For the daemons' listener tests; the connection is lost at the end, so an HTTP
    channel's timers do not outlive the test.
    """
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    try:
        protocol.dataReceived(CLIENT_HELLO)
        return transport.value(), transport.disconnecting
    finally:
        protocol.connectionLost(Failure(ConnectionDone()))


class _NullRequest(Request):
    def process(self) -> None:
        self.finish()


class _App:
    app = Klein()

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.sinks: list[StreamingSink] = []
        self.written: list[tuple[int, list[bytes]]] = []

    @app.route("/small", methods=["POST"])
    def small(self, request: IRequest) -> bytes:
        self.bodies.append(request.content.read())  # type: ignore[attr-defined]
        return b"ok"

    @app.route("/stream", methods=["PUT"])
    async def stream(self, request: IRequest) -> bytes:
        sink = body_sink(request, self.plan_stream)
        written = await sink.done()
        return b"%d" % written

    def plan_stream(self, head: RequestHead, args: Any = None) -> BodyPlan:
        if head.header("x-refuse") is not None:
            raise APIError(409, "refused on the head")
        sink = StreamingSink(
            run_inline, lambda offset, chunks: self.written.append((offset, chunks)), 0, batch=8
        )
        self.sinks.append(sink)
        return BodyPlan(32, sink)


def _site(
    app: _App, clock: Clock, limits: ServerLimits | None = None, checks: Any = ()
) -> KrakenSite:
    gate = KleinRoutes(app.app, {"stream": app.plan_stream}, default_limit=16, checks=checks)
    return KrakenSite(app.app.resource(), clock=clock, gate=gate, limits=limits or ServerLimits())


def _connect(site: KrakenSite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


class HeadDecisionTests(SynchronousTestCase):
    """The gate decides on the head: nothing of a refused body is read or kept."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = _App()
        self.site = _site(self.app, self.clock)

    def test_content_length_over_limit_is_413_at_once(self) -> None:
        """A declared body over the route's limit is answered 413 before any body byte arrives."""
        channel, transport = _connect(self.site)
        channel.dataReceived(
            b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 536870912\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"Connection: close", answer)
        self.assertIn(b"exceeds the limit of 16 bytes", answer)
        channel.dataReceived(b"x" * 100_000)  # dropped, not buffered
        self.assertEqual(self.app.bodies, [])
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_cut_when_it_passes_the_limit(self) -> None:
        """A chunked body is refused the moment it passes the limit, not when it ends."""
        channel, transport = _connect(self.site)
        channel.dataReceived(
            b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"a\r\n0123456789\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"a\r\n0123456789\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.app.bodies, [])

    def test_small_body_served(self) -> None:
        """A body within the limit reaches the route in ``request.content``."""
        channel, transport = _connect(self.site)
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(self.app.bodies, [b"hello"])
        self.assertIn(b"200 OK", transport.value())

    def test_refusal_from_the_plan_skips_100_continue(self) -> None:
        """A plan's refusal is the answer; a client waiting for 100-continue never gets it."""
        channel, transport = _connect(self.site)
        channel.dataReceived(
            b"PUT /stream HTTP/1.1\r\nHost: x\r\nX-Refuse: 1\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 409 "), answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"refused on the head", answer)

    def test_accepted_body_gets_100_continue_and_streams(self) -> None:
        """An accepted body gets 100-continue, streams to the sink in batches, in order."""
        channel, transport = _connect(self.site)
        channel.dataReceived(
            b"PUT /stream HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n"
        )
        self.assertIn(b"100 Continue", transport.value())
        channel.dataReceived(b"0123456789")
        channel.dataReceived(b"abcdefghij")
        self.assertEqual(
            [(o, b"".join(c)) for o, c in self.app.written],
            [(0, b"0123456789"), (10, b"abcdefghij")],
        )
        self.assertIn(b"\r\n20\r\n", transport.value())  # the chunked answer: "20"

    def test_read_only_check_refuses_writes_with_405(self) -> None:
        """The read-only check answers a write 405 with ``Allow`` before reading its body."""
        site = _site(self.app, self.clock, checks=[read_only])
        channel, transport = _connect(site)
        channel.dataReceived(
            b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 536870912\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 "), answer)
        self.assertIn(b"allow: GET, HEAD", answer)

    def test_head_request_refusal_has_no_body(self) -> None:
        """A refused HEAD gets the status and headers only."""

        def forbid(head: RequestHead) -> None:
            raise APIError(403, "no")

        site = _site(self.app, self.clock, checks=[forbid])
        channel, transport = _connect(site)
        channel.dataReceived(b"HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "))
        self.assertTrue(answer.endswith(b"\r\n\r\n"))


class DeadlineTests(SynchronousTestCase):
    """A connection must send its head in time; a TLS hello on a plain port is turned away."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = _App()

    def test_half_a_request_line_is_cut_off(self) -> None:
        """Half a request line is not waited for beyond ``header_timeout``."""
        site = _site(self.app, self.clock, ServerLimits(header_timeout=10, idle_timeout=60))
        channel, transport = _connect(site)
        channel.dataReceived(b"GET /sm")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"a")  # trickling bytes does not extend the deadline
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)

    def test_kept_alive_connection_gets_a_new_deadline_per_request(self) -> None:
        """After a response, the next request's head has its own deadline from its first byte."""
        site = _site(self.app, self.clock, ServerLimits(header_timeout=10, idle_timeout=60))
        channel, transport = _connect(site)
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(self.app.bodies, [b"x"])
        self.clock.advance(30)  # idle, below idle_timeout
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET /")
        self.clock.advance(10.5)
        self.assertTrue(transport.disconnecting)

    def test_idle_connection_closed(self) -> None:
        """A kept-alive connection that sends nothing is closed after ``idle_timeout``."""
        site = _site(self.app, self.clock, ServerLimits(header_timeout=10, idle_timeout=60))
        channel, transport = _connect(site)
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        self.clock.advance(61)
        self.assertTrue(transport.disconnecting)

    def test_tls_hello_gets_400_and_close(self) -> None:
        """The first byte of a TLS handshake record gets the plain-HTTP 400 and a close."""
        site = _site(self.app, self.clock)
        channel, transport = _connect(site)
        channel.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertEqual(transport.value(), TLS_ANSWER)
        self.assertTrue(transport.disconnecting)


class _Producer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


class StreamingSinkTests(SynchronousTestCase):
    """The sink writes in order, one batch at a time, and pushes back on the connection."""

    def test_back_pressure(self) -> None:
        """More than ``high_water`` bytes waiting pause the connection; draining resumes it."""
        jobs: list[Deferred[Any]] = []
        calls: list[tuple[Any, ...]] = []

        def run(function: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            calls.append((function, args))
            jobs.append(d)
            return d

        writes: list[tuple[int, bytes]] = []
        sink = StreamingSink(
            run,  # type: ignore[arg-type]
            lambda offset, chunks: writes.append((offset, b"".join(chunks))),
            100,
            batch=4,
            high_water=8,
        )
        producer = _Producer()
        sink.start(producer, lambda f: None)
        sink.write(b"aaaa")  # a batch: submitted
        self.assertEqual(len(jobs), 1)
        sink.write(b"bbbb")
        sink.write(b"cccc")  # 8 waiting: pause
        self.assertEqual(producer.paused, 1)
        function, args = calls[0]
        jobs[0].callback(function(*args))
        self.assertEqual(producer.resumed, 0)  # still 8 waiting, now in the next job
        function, args = calls[1]
        jobs[1].callback(function(*args))
        self.assertEqual(producer.resumed, 1)
        done = sink.done()
        self.assertNoResult(done)
        sink.end()
        self.assertEqual(self.successResultOf(done), 12)
        self.assertEqual(writes, [(100, b"aaaa"), (104, b"bbbbcccc")])

    def test_write_failure_reported_and_done_fails(self) -> None:
        """A failing write tells the request (to answer at once) and fails ``done``."""

        def write_at(offset: int, chunks: list[bytes]) -> None:
            raise OSError(28, "No space left on device")

        aborted: list[bool] = []
        failed: list[Failure] = []
        sink = StreamingSink(run_inline, write_at, 0, batch=2, aborted=lambda: aborted.append(True))
        sink.start(_Producer(), failed.append)
        sink.write(b"xyz")
        self.assertEqual(len(failed), 1)
        self.assertEqual(aborted, [True])
        self.failureResultOf(sink.done(), OSError)

    def test_buffered_body_replayed_under_a_plain_site(self) -> None:
        """Under a Site that buffered the body, ``body_sink`` runs the plan and feeds it."""
        app = _App()
        request: Any = type("R", (), {})()
        request.content = io.BytesIO(b"0123456789")
        request.method = b"PUT"
        request.uri = b"/stream"
        request.requestHeaders = Headers()
        sink = body_sink(request, app.plan_stream)
        self.assertEqual(self.successResultOf(sink.done()), 10)
        self.assertEqual(b"".join(b"".join(c) for _, c in app.written), b"0123456789")


class TwistedContractTests(SynchronousTestCase):
    """The HTTPChannel internals kraken.http.server reads; a Twisted upgrade that changes them
    must fail here, loudly, rather than in production."""

    def test_request_line_attributes_while_headers_arrive(self) -> None:
        """``_command``, ``_path``, ``_version`` and ``length`` hold the head at
        ``allHeadersReceived``, and ``_send100Continue`` exists."""
        seen: list[tuple[Any, ...]] = []

        class Probe(HTTPChannel):
            def allHeadersReceived(self) -> None:
                seen.append((self._command, self._path, self._version, self.length))
                super().allHeadersReceived()

        channel = Probe()
        channel.requestFactory = _NullRequest
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"PUT /a?b=c HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(seen, [(b"PUT", b"/a?b=c", b"HTTP/1.1", 3)])
        self.assertTrue(callable(getattr(HTTPChannel, "_send100Continue", None)))
        self.assertTrue(callable(getattr(HTTPChannel, "checkPersistence", None)))
