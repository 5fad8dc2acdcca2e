"""
The read-only HTTP backend: blobs fetched from a URL template, and response streaming.

``download_url`` names where a blob lives, with the name substituted for ``{name}`` (or Go
Kraken's printf ``%s``) and optionally the namespace for ``{namespace}``, e.g.
``http://blobs.example.com/blobs/{name}`` or ``http://x/fetch?sha256=%s``.  Both are
percent-encoded (``/`` and ``:`` kept) after validation, so they cannot add a query or a host.

- stat: ``HEAD``; 404 -> :class:`BlobNotFound`; the size is ``Content-Length`` when the server
  sends one, else 0 (Go Kraken always says 0).  A server that refuses ``HEAD`` (405, 501) is
  taken to have the blob, as in Go Kraken; the download then says the truth.
- download: ``GET`` streamed into the consumer with back-pressure (see
  :func:`stream_response`).
- upload and list: :class:`OperationNotSupported` (after the usual argument checks).

All requests go through a :class:`~kraken.http.client.KrakenHTTPClient`; the backend built
from config owns its :class:`~kraken.http.client.HTTPClientFactory` (an outside server gets
neither the cluster's TLS client certificate nor its retry statuses' meaning of "peer down").
"""

from __future__ import annotations

from typing import ClassVar, cast
from urllib.parse import quote

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from kraken.backends.config import BackendContext
from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    OperationNotSupported,
    TransferStopped,
    UploadSource,
)
from kraken.backends.names import check_namespace, parse_name, unsupported_list
from kraken.config.backends import (
    DEFAULT_HTTP_DOWNLOAD_TIMEOUT,
    URL_PLACEHOLDER,
    HTTPOptions,
    check_url_template,
)
from kraken.http.client import HTTPClientFactory, KrakenHTTPClient, RequestTimeout, TreqResponse

#: Seconds to wait for a download's response headers (Go Kraken's ``download_timeout``).
DEFAULT_DOWNLOAD_TIMEOUT = DEFAULT_HTTP_DOWNLOAD_TIMEOUT

#: Seconds a download body may stall before the download fails.
DEFAULT_IDLE_TIMEOUT = 60.0


@implementer(IPushProducer)
class _ResponseStreamer(Protocol):
    """Feeds a response body to a consumer, pausing the connection while the consumer is paused."""

    def __init__(
        self,
        consumer: IConsumer,
        done: Deferred[int],
        clock: IReactorTime | None = None,
        idle_timeout: float | None = None,
        url: str = "",
    ) -> None:
        self._consumer = consumer
        self._done: Deferred[int] | None = done
        self._stopped = False
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self._url = url
        self.received = 0

    def _arm(self) -> None:
        if self._clock is None or self._idle_timeout is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        else:
            self._timer = self._clock.callLater(self._idle_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expire(self) -> None:
        self._timed_out = True
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionMade(self) -> None:
        self._consumer.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped or self._done is None:
            return
        self.received += len(data)
        self._arm()
        self._consumer.write(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._disarm()
        done, self._done = self._done, None
        if done is None:
            return
        self._consumer.unregisterProducer()
        if self._stopped:
            done.errback(
                TransferStopped(f"consumer stopped the transfer after {self.received} bytes")
            )
        elif self._timed_out:
            assert self._idle_timeout is not None
            done.errback(RequestTimeout(self._url, self._idle_timeout))
        elif isinstance(reason.value, ResponseDone | PotentialDataLoss):
            done.callback(self.received)
        else:
            done.errback(reason)

    def pauseProducing(self) -> None:
        """Stop reading from the connection (TCP back-pressure reaches the server)."""
        self._disarm()  # a slow consumer is not a stalled server
        if self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the connection again."""
        if self._done is not None:
            self._arm()
        if self.transport is not None:
            cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        """Drop the connection; the download fails with :class:`TransferStopped`."""
        self._stopped = True
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


def stream_response(
    response: IResponse,
    consumer: IConsumer,
    *,
    clock: IReactorTime | None = None,
    idle_timeout: float | None = None,
    url: str = "",
) -> Deferred[int]:
    """
    Write the body of ``response`` into ``consumer``; fire with the number of bytes.

    Follows :meth:`IBackend.download`'s contract: a push producer is registered with the
    consumer before the first write and unregistered before the Deferred fires; pausing it
    pauses the connection, so nothing is buffered here; ``stopProducing`` drops the
    connection and fails the Deferred with :class:`TransferStopped`.  A body cut short (fewer
    bytes than ``Content-Length``) fails with the transport's error.

    With a ``clock`` and ``idle_timeout``, a server that sends nothing for ``idle_timeout``
    seconds while the consumer is not paused is dropped and the Deferred fails with
    :class:`~kraken.http.client.RequestTimeout` (naming ``url``): the client's own timeout
    only covers the wait for the response headers.
    """
    done: Deferred[int] = Deferred()
    streamer = _ResponseStreamer(consumer, done, clock, idle_timeout, url)
    response.deliverBody(streamer)  # type: ignore[no-untyped-call]
    return done


def response_length(response: IResponse) -> int | None:
    """The response's ``Content-Length`` (also for a ``HEAD``), or ``None`` if it has none."""
    values = response.headers.getRawHeaders(b"content-length") or []
    if len(values) == 1 and values[0].strip().isdigit():
        return int(values[0])  # the header: a HEAD response's ``length`` is always 0
    if response.length is not UNKNOWN_LENGTH:
        return int(response.length)
    return None


def discard_body(response: IResponse) -> Deferred[None]:
    """Read and drop the body of ``response`` (so that its connection can be reused)."""
    done: Deferred[int] = Deferred()
    response.deliverBody(_ResponseStreamer(_NullConsumer(), done))  # type: ignore[no-untyped-call]
    return done.addCallback(lambda _: None)


@implementer(IConsumer)
class _NullConsumer:
    """Throws everything away."""

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


@implementer(IBackend)
@frozen
class HTTPBackend:
    """An :class:`IBackend` that reads blobs from ``download_url``; upload and list unsupported."""

    download_url: str
    """URL template with ``{name}`` or ``%s`` (and optionally ``{namespace}``)."""

    http: KrakenHTTPClient
    """The client every request goes through."""

    factory: HTTPClientFactory | None = None
    """The factory ``http`` came from, closed by :meth:`close` when the backend owns it."""

    clock: IReactorTime | None = None
    """Times ``idle_timeout`` (none without a clock)."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    """Seconds a download body may stall (while not paused) before it is dropped."""

    kind: ClassVar[str] = "http"

    def __attrs_post_init__(self) -> None:
        check_url_template(self.download_url)

    def url_of(self, namespace: str, name: str) -> str:
        """The URL of ``name`` (raises :class:`InvalidName` for a bad name or namespace)."""
        check_namespace(namespace)
        parse_name(name)
        url = URL_PLACEHOLDER.sub(lambda _: quote(name, safe="/:"), self.download_url)
        return url.replace("{namespace}", quote(namespace, safe="/:"))

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """See :meth:`IBackend.stat`: a ``HEAD``."""
        return ensureDeferred(self._stat(namespace, name))

    async def _stat(self, namespace: str, name: str) -> BlobInfo:
        response = await self.http.head(self.url_of(namespace, name), ok=(200, 404, 405, 501))
        await discard_body(response)
        if response.code == 404:
            raise BlobNotFound(namespace, name)
        if response.code != 200:
            return BlobInfo(0)
        return BlobInfo(response_length(response) or 0)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """See :meth:`IBackend.download`: a ``GET`` streamed into ``consumer``."""
        return ensureDeferred(self._download(namespace, name, consumer))

    async def _download(self, namespace: str, name: str, consumer: IConsumer) -> int:
        response_url = self.url_of(namespace, name)
        response: TreqResponse = await self.http.get(response_url, ok=(200, 404))
        if response.code == 404:
            await discard_body(response)
            raise BlobNotFound(namespace, name)
        return await stream_response(
            response, consumer, clock=self.clock, idle_timeout=self.idle_timeout, url=response_url
        )

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        try:
            self.url_of(namespace, name)
        except InvalidName:
            return fail()
        return fail(OperationNotSupported(self.kind, "upload"))

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        try:
            self.url_of(namespace, name)
        except InvalidName:
            return fail()
        return fail(OperationNotSupported(self.kind, "delete"))

    def list(
        self,
        prefix: str,
        limit: int = DEFAULT_LIST_LIMIT,
        continuation_token: str | None = None,
    ) -> Deferred[ListResult]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        return unsupported_list(self.kind, prefix, limit)

    def close(self) -> Deferred[None]:
        """Close the pooled connections of the factory this backend owns."""
        if self.factory is None:
            return succeed(None)
        return self.factory.close()


def build_http_backend(options: HTTPOptions, context: BackendContext) -> IBackend:
    """An :class:`HTTPBackend` for the checked ``http`` options, with its own client factory
    on the context's reactor."""
    factory = HTTPClientFactory(context.reactor, timeout=options.download_timeout)
    return HTTPBackend(options.download_url, factory.client(), factory, context.reactor)
