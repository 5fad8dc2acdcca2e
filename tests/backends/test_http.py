"""Tests for kraken.backends.http against a twisted.web server on 127.0.0.1."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.http import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    HTTPBackend,
    check_url_template,
    stream_response,
)
from kraken.backends.interface import (
    BlobInfo,
    BlobNotFound,
    IBackend,
    OperationNotSupported,
    TransferStopped,
)
from kraken.backends.streams import BytesConsumer, download_to_path
from kraken.config import ConfigError
from kraken.config.backends import HTTPOptions
from kraken.http.client import HTTPClientFactory, HTTPStatusError, RequestTimeout, RetryPolicy
from kraken.io.runner import run_inline
from tests.backends.base import NAMESPACE, BackendTests, RunAsynchronously, backend_test, blob_name
from tests.backends.test_s3 import PauseEveryWriteConsumer, StopAfterFirstWriteConsumer

reactor: Any = _reactor


class BlobServer(Resource):
    """Serves ``/blobs/<name>`` and ``/q?sha256=<name>`` from a dict; records requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[bytes, bytes]] = []
        self.refuse_head = False
        self.hide_length = False

    def render_HEAD(self, request: Request) -> bytes:
        """Answer like GET without a body, or 405 when told to refuse HEAD."""
        if self.refuse_head:
            request.setResponseCode(405)
            return b""
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        """The blob named by the path or the ``sha256`` query argument, or 404."""
        assert request.method is not None and request.uri is not None
        self.requests.append((request.method, request.uri))
        path = request.path.decode()
        if path == "/q":
            name = (request.args or {}).get(b"sha256", [b""])[0].decode()
        elif path.startswith("/blobs/"):
            name = path[len("/blobs/") :]
        else:
            name = ""
        if path == "/error":
            request.setResponseCode(500)
            return b"broken"
        data = self.blobs.get(name)
        if data is None:
            request.setResponseCode(404)
            return b"not found"
        if self.hide_length:
            request.write(data)  # chunked: no Content-Length
            request.finish()
            return NOT_DONE_YET  # type: ignore[return-value]
        request.setHeader(b"content-length", str(len(data)).encode())
        return data


class HTTPServerMixin:
    """A BlobServer listening on 127.0.0.1 and a client factory for it."""

    addCleanup: Any

    def setUp(self) -> None:
        """Listen on a free port; close the port and the client pool after the test."""
        self.server = BlobServer()
        port = reactor.listenTCP(0, Site(self.server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.factory = HTTPClientFactory(reactor, timeout=10, retry=RetryPolicy(max_retries=0))
        self.addCleanup(self.factory.close)

    def http_backend(self, template: str = "{base}/blobs/{name}") -> HTTPBackend:
        """An HTTPBackend on the server (``{base}`` in ``template`` is its address)."""
        return HTTPBackend(template.replace("{base}", self.base), self.factory.client())


class HTTPBackendTests(HTTPServerMixin, RunAsynchronously, BackendTests, TestCase):
    """The http backend passes the abstract suite for every backend."""

    def make_backend(self) -> IBackend:
        """An HTTPBackend on an empty server."""
        return self.http_backend()

    @backend_test
    async def test_list_empty(self) -> None:
        """list is not supported (valid arguments fail with OperationNotSupported)."""
        error = await self.assert_fails(self.make_backend().list(""), OperationNotSupported)
        self.assertIn("list", str(error))

    @backend_test
    async def test_upload_not_supported(self) -> None:
        """upload of a valid name fails with OperationNotSupported and sends nothing."""
        await self.assert_fails(
            self.make_backend().upload(NAMESPACE, blob_name("x"), b"data"), OperationNotSupported
        )
        self.assertEqual(self.server.requests, [])

    @backend_test
    async def test_delete_not_supported(self) -> None:
        """delete of a valid name fails with OperationNotSupported and sends nothing."""
        await self.assert_fails(
            self.make_backend().delete(NAMESPACE, blob_name("x")), OperationNotSupported
        )
        self.assertEqual(self.server.requests, [])

    @backend_test
    async def test_stat_and_download(self) -> None:
        """A served blob has its Content-Length as size and downloads byte for byte."""
        data = os.urandom(3_000_000)
        name = blob_name("served")
        self.server.blobs[name] = data
        backend = self.make_backend()
        self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(len(data)))
        consumer = BytesConsumer()
        self.assertEqual(await backend.download(NAMESPACE, name, consumer), len(data))
        self.assertEqual(consumer.value(), data)
        self.assertIsNone(consumer.producer)
        self.assertEqual(
            self.server.requests,
            [(b"HEAD", f"/blobs/{name}".encode()), (b"GET", f"/blobs/{name}".encode())],
        )

    @backend_test
    async def test_printf_template_and_tags(self) -> None:
        """Go's ``%s`` template works, and a tag name is substituted with ``/`` and ``:`` kept."""
        backend = self.http_backend("{base}/q?sha256=%s")
        name = blob_name("printf")
        self.server.blobs[name] = b"printf"
        self.server.blobs["library/alpine:3"] = b"tag"
        self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(6))
        consumer = BytesConsumer()
        await backend.download(NAMESPACE, "library/alpine:3", consumer)
        self.assertEqual(consumer.value(), b"tag")
        self.assertEqual(self.server.requests[-1], (b"GET", b"/q?sha256=library/alpine:3"))

    @backend_test
    async def test_stat_without_head(self) -> None:
        """A server refusing HEAD gets Go's answer: present, size 0."""
        self.server.refuse_head = True
        self.assertEqual(await self.make_backend().stat(NAMESPACE, blob_name("?")), BlobInfo(0))

    @backend_test
    async def test_server_error(self) -> None:
        """A 500 is an HTTPStatusError, not BlobNotFound."""
        backend = self.http_backend("{base}/error?%s")
        await self.assert_fails(backend.stat(NAMESPACE, blob_name("e")), HTTPStatusError)
        await self.assert_fails(
            backend.download(NAMESPACE, blob_name("e"), BytesConsumer()), HTTPStatusError
        )

    @backend_test
    async def test_download_honours_pause(self) -> None:
        """No chunk reaches a consumer while it has paused the download."""
        data = os.urandom(4_000_000)
        name = blob_name("pause")
        self.server.blobs[name] = data
        consumer = PauseEveryWriteConsumer()
        self.assertEqual(await self.make_backend().download(NAMESPACE, name, consumer), len(data))
        self.assertEqual(consumer.value(), data)
        self.assertEqual(consumer.writes_while_paused, 0)
        self.assertGreater(consumer.pauses, 1)

    @backend_test
    async def test_download_stopped(self) -> None:
        """A consumer that stops the download gets TransferStopped and is unregistered from."""
        name = blob_name("stop")
        self.server.blobs[name] = os.urandom(8_000_000)
        consumer = StopAfterFirstWriteConsumer()
        await self.assert_fails(
            self.make_backend().download(NAMESPACE, name, consumer), TransferStopped
        )
        self.assertIsNone(consumer.producer)
        self.assertLess(len(consumer.value()), 8_000_000)

    @backend_test
    async def test_download_to_path_without_length(self) -> None:
        """A body without Content-Length lands whole in a file."""
        self.server.hide_length = True
        data = os.urandom(2_000_000)
        name = blob_name("nolength")
        self.server.blobs[name] = data
        target = self.mktemp()
        size = await download_to_path(self.make_backend(), NAMESPACE, name, target, run_inline)
        self.assertEqual(size, len(data))
        self.assertEqual(read_file(target), data)

    @backend_test
    async def test_download_missing_sends_one_request(self) -> None:
        """A 404 is BlobNotFound after one GET (no retries of a definite answer)."""
        name = blob_name("absent")
        await self.assert_fails(
            self.make_backend().download(NAMESPACE, name, BytesConsumer()), BlobNotFound
        )
        self.assertEqual(len(self.server.requests), 1)


def read_file(path: str) -> bytes:
    """The content of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


class FakeResponse:
    """Just enough of an IResponse to deliver a body from a StringTransport by hand."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        """Connect ``protocol`` to the transport; the test feeds it."""
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class IdleTimeoutTests(SynchronousTestCase):
    """stream_response drops a stalled body, but never blames the server for a paused consumer."""

    def stream(self, consumer: BytesConsumer) -> tuple[Clock, FakeResponse, Deferred[int]]:
        """Start streaming a fake response with a 10 s idle timeout."""
        clock, response = Clock(), FakeResponse()
        d = stream_response(
            response,  # type: ignore[arg-type]
            consumer,
            clock=clock,
            idle_timeout=10,
            url="http://x/blob",
        )
        return clock, response, d

    def test_stall_times_out(self) -> None:
        """Data resets the timer; 10 s of silence stops the transport and fails the download."""
        consumer = BytesConsumer()
        clock, response, d = self.stream(consumer)
        assert response.protocol is not None
        clock.advance(9)
        response.protocol.dataReceived(b"abc")
        clock.advance(9)
        self.assertEqual(response.transport.producerState, "producing")
        clock.advance(1)
        self.assertEqual(response.transport.producerState, "stopped")
        response.protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(d, RequestTimeout)
        self.assertIn("http://x/blob", str(error.value))
        self.assertIsNone(consumer.producer)

    def test_paused_consumer_does_not_time_out(self) -> None:
        """While the consumer has paused the body, no idle timeout runs; it restarts on resume."""
        consumer = BytesConsumer()
        clock, response, d = self.stream(consumer)
        producer: Any = consumer.producer
        producer.pauseProducing()
        clock.advance(100)
        self.assertEqual(response.transport.producerState, "paused")
        producer.resumeProducing()
        clock.advance(9)
        assert response.protocol is not None
        response.protocol.dataReceived(b"abc")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(clock.getDelayedCalls(), [])


class HTTPBackendOptionsTests(SynchronousTestCase):
    """The ``http`` backend's options and URL templates."""

    def test_templates(self) -> None:
        """A template needs an http(s) URL and exactly one placeholder."""
        for good in ["http://x/{name}", "https://x/?d=%s", "http://x/{namespace}/{name}"]:
            self.assertEqual(check_url_template(good), good)
        for bad in ["ftp://x/{name}", "http://x/", "http://x/{name}/%s", "/blobs/{name}"]:
            with self.assertRaises(ValueError):
                check_url_template(bad)

    def test_namespace_placeholder(self) -> None:
        """``{namespace}`` is substituted, percent-encoding what a URL cannot hold."""
        backend = HTTPBackend("http://x/{namespace}/{name}", HTTPClientFactory(Clock()).client())
        self.assertEqual(backend.url_of("a/b%c", "library/x:1"), "http://x/a/b%25c/library/x:1")

    def test_options(self) -> None:
        """download_url and download_timeout (default 180 s) are read; build makes a backend."""
        config = BackendsConfig.from_list(
            [{"namespace": ".*", "backend": {"http": {"download_url": "http://h/{name}"}}}]
        )
        self.assertEqual(
            config.entries[0].backend.http,
            HTTPOptions(download_url="http://h/{name}", download_timeout=DEFAULT_DOWNLOAD_TIMEOUT),
        )
        backend = config.build(BackendContext(Clock(), run_inline)).backend_for("x")
        assert isinstance(backend, HTTPBackend)
        self.assertEqual(backend.download_url, "http://h/{name}")
        self.successResultOf(backend.close())

    def test_option_errors(self) -> None:
        """Bad options are ConfigError lines naming their key."""
        for raw, key in [
            ({}, "http.download_url"),
            ({"download_url": "http://h/"}, "http.download_url"),
            ({"download_url": "http://h/%s", "download_timeout": 0}, "http.download_timeout"),
            ({"download_url": "http://h/%s", "x": 1}, "http.x"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                BackendsConfig.from_list([{"namespace": ".*", "backend": {"http": raw}}])
            (problem,) = caught.exception.problems
            self.assertTrue(problem.startswith(f"backends[0].backend.{key}: "), problem)
