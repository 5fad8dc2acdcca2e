"""
The one HTTP client factory for calls between Kraken components.

Every component that talks to another (agent -> tracker, tracker -> origin,
proxy -> build-index, origin -> origin, health checks) gets its client from
:class:`HTTPClientFactory`, which applies, in one place:

* TLS: when a client TLS policy is configured, every ``http://`` URL is
  rewritten to ``https://`` (there is no plain-HTTP fallback), as the Go
  ``httputil`` does.
* Timeouts, measured with the injected reactor, per attempt.
* Retries with backoff on network errors and on 429/502/503/504.
* Status checking: only accepted codes (200 unless told otherwise) come back
  as responses; anything else raises :class:`HTTPStatusError`, and transport
  failures raise :class:`NetworkError`, so that the passive health checker can
  count the latter without confusing them with an application's 404.

Responses are unbuffered: the body of an accepted response can be read once,
with ``response.content()``/``response.json()`` for small bodies or
:func:`collect_body`/:func:`save_body` to stream a large one without holding it.

Tests build the same client over an in-memory agent (see
:mod:`kraken.http.testing`), e.g.
``HTTPClientFactory(clock, agent=RequestTraversalAgent(app.resource())).client()``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO, Any, ClassVar, Final, TypeAlias, cast

from attrs import define, field, frozen, validators
from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import error as web_error
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from kraken.io.reactor import IClientReactor

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "RETRYABLE_STATUSES",
    "BodyTooLarge",
    "HTTPClientFactory",
    "HTTPStatusError",
    "KrakenHTTPClient",
    "NetworkError",
    "RequestError",
    "RequestTimeout",
    "RetryPolicy",
    "TreqResponse",
    "collect_body",
    "is_network_failure",
    "read_body",
    "save_body",
]

TreqResponse: TypeAlias = _Response
"""What the client returns: a treq response (an ``IResponse`` with ``content()``, ``json()``)."""

HeadersArg: TypeAlias = Headers | Mapping[str | bytes, str | bytes | Sequence[str | bytes]] | None
ParamsArg: TypeAlias = Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] | None

DEFAULT_TIMEOUT: Final = 60.0
"""Seconds per attempt, as the Go ``httputil`` default."""

RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
"""Statuses that say "try again": too many requests and the gateway/unavailable family."""

DEFAULT_MAX_ERROR_BODY: Final = 64 * 1024
"""Bytes of an error response body kept in :class:`HTTPStatusError` (the rest is dropped)."""


class RequestError(Exception):
    """Base of the errors the client raises for a request that did not succeed."""

    url: str
    method: str


class HTTPStatusError(RequestError):
    """The server answered with a status that the caller did not accept."""

    def __init__(self, status: int, body: bytes, url: str, method: str = "GET") -> None:
        super().__init__(status, body, url, method)
        self.status = status
        self.body = body
        self.url = url
        self.method = method

    @property
    def retryable(self) -> bool:
        """Whether the status is one of :data:`RETRYABLE_STATUSES`."""
        return self.status in RETRYABLE_STATUSES

    def __str__(self) -> str:
        text = self.body[:200].decode("utf-8", "replace").strip()
        return f"{self.method} {self.url}: HTTP {self.status}" + (f": {text}" if text else "")


class NetworkError(RequestError):
    """The request failed below HTTP: refused, reset, DNS, TLS, timed out.

    The passive health checker counts these against the host; a
    :class:`HTTPStatusError` means the host is alive and answered.
    """

    def __init__(self, url: str, reason: str, method: str = "GET") -> None:
        super().__init__(url, reason, method)
        self.url = url
        self.reason = reason
        self.method = method

    def __str__(self) -> str:
        return f"{self.method} {self.url}: network error: {self.reason}"


class RequestTimeout(NetworkError):
    """No complete answer within the attempt's timeout."""

    def __init__(self, url: str, timeout: float, method: str = "GET") -> None:
        super().__init__(url, f"timed out after {timeout:g}s", method)
        self.timeout = timeout


class BodyTooLarge(Exception):
    """A body longer than the limit the reader was given."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


_NETWORK_ERRORS: Final = (
    ierror.ConnectError,  # refused, timeout, unknown host, no route...
    ierror.DNSLookupError,
    ierror.ConnectionClosed,  # lost / done
    ierror.ConnectionAborted,
    ierror.TimeoutError,
    OSError,
)


def is_network_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (as raised by an ``IAgent``) is a transport failure.

    Twisted wraps connection-level reasons in ``ResponseFailed`` and friends;
    those carrying a ``twisted.web.error.Error`` (a refused redirect, a redirect
    loop) are HTTP-level and do not count.
    """
    if isinstance(exc, web_error.Error):
        return False
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    if isinstance(exc, (ResponseFailed, RequestTransmissionFailed)):
        return not any(isinstance(f.value, web_error.Error) for f in exc.reasons)
    return isinstance(exc, RequestNotSent)


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, (CancelledError, ierror.ConnectingCancelledError)):
        return True
    reasons = exc.reasons if isinstance(exc, (ResponseFailed, RequestTransmissionFailed)) else []
    return any(isinstance(f.value, CancelledError) for f in reasons)


def _describe(exc: BaseException) -> str:
    reasons = getattr(exc, "reasons", None)
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(
            f"{type(f.value).__name__}: {f.value}" if isinstance(f, Failure) else str(f)
            for f in reasons
        )
        return f"{type(exc).__name__}({inner})"
    return f"{type(exc).__name__}: {exc}"


@frozen
class RetryPolicy:
    """When and how long to wait before trying a failed request again.

    The wait before retry ``n`` (0-based) is
    ``min(initial_backoff * multiplier ** n, max_backoff)`` seconds. The default
    is the Go Kraken's: a constant 250 ms, 2 retries (3 attempts in all).
    """

    max_retries: int = field(default=2, validator=validators.ge(0))
    initial_backoff: float = field(default=0.25, validator=validators.ge(0.0))
    multiplier: float = field(default=1.0, validator=validators.ge(1.0))
    max_backoff: float = field(default=30.0, validator=validators.ge(0.0))
    statuses: frozenset[int] = RETRYABLE_STATUSES

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        return float(min(self.initial_backoff * self.multiplier**retry, self.max_backoff))

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt (a network error or retryable status)."""
        if isinstance(exc, HTTPStatusError):
            return exc.status in self.statuses
        return isinstance(exc, NetworkError)


NO_RETRY: Final = RetryPolicy(max_retries=0)
"""A policy that makes one attempt only."""


@implementer(IBodyProducer)
class _BytesProducer:
    """Send an in-memory body in one write (no cooperator, so no global reactor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@frozen(kw_only=True)
class _Call:
    """One request as the caller asked for it, replayed on each attempt."""

    method: str
    url: str
    data: bytes | IBodyProducer | None
    headers: HeadersArg
    params: ParamsArg
    ok: frozenset[int]
    timeout: float
    follow_redirects: bool


@frozen
class KrakenHTTPClient:
    """Send requests with the factory's TLS, timeout and retry settings.

    Obtain one from :meth:`HTTPClientFactory.client`; do not build it directly.
    """

    _treq: HTTPClient
    _reactor: IReactorTime
    _timeout: float
    _retry: RetryPolicy
    _https: bool
    _max_error_body: int

    log: ClassVar[Logger] = Logger()

    def url_for(self, url: str) -> str:
        """The URL actually requested: ``http://`` becomes ``https://`` when TLS is configured."""
        if self._https and url.startswith("http://"):
            return "https://" + url[len("http://") :]
        return url

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | IBodyProducer | None = None,
        headers: HeadersArg = None,
        params: ParamsArg = None,
        ok: Collection[int] = (200,),
        timeout: float | None = None,
        retry: bool | RetryPolicy = True,
        follow_redirects: bool = True,
    ) -> Deferred[TreqResponse]:
        """Send a request; fire with the response if its status is in ``ok``.

        Fails with :class:`HTTPStatusError` for any other status (after retries
        when it is retryable) and with :class:`NetworkError` (or its subclass
        :class:`RequestTimeout`) when no answer arrived. ``timeout`` applies to
        each attempt until the response headers (and, for errors, the bounded
        body) are in; reading an accepted body is the caller's business.

        A body given as an ``IBodyProducer`` can be sent only once, so such a
        request is never retried; pass ``bytes`` to make it retryable.
        ``follow_redirects`` only affects GET and HEAD; for other methods a 3xx
        is a status like any other.
        """
        policy = self._retry if retry is True else (NO_RETRY if retry is False else retry)
        if data is not None and not isinstance(data, bytes):
            policy = NO_RETRY
        call = _Call(
            method=method.upper(),
            url=self.url_for(url),
            data=data,
            headers=headers,
            params=params,
            ok=frozenset(ok),
            timeout=self._timeout if timeout is None else timeout,
            follow_redirects=follow_redirects,
        )
        return Deferred.fromCoroutine(self._send(call, policy))

    def get(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("HEAD", url, ...)``."""
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("POST", url, ...)``."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("PUT", url, ...)``."""
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("PATCH", url, ...)``."""
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Deferred[TreqResponse]:
        """``request("DELETE", url, ...)``."""
        return self.request("DELETE", url, **kwargs)

    async def _send(self, call: _Call, policy: RetryPolicy) -> TreqResponse:
        retries = 0
        while True:
            try:
                return await self._timed_attempt(call)
            except RequestError as e:
                if retries >= policy.max_retries or not policy.should_retry(e):
                    raise
                delay = policy.backoff(retries)
                retries += 1
                self.log.info(
                    "{method} {url} failed ({error}); retry {retry} of {max_retries} in {delay}s",
                    method=call.method,
                    url=call.url,
                    error=str(e),
                    retry=retries,
                    max_retries=policy.max_retries,
                    delay=delay,
                )
                await deferLater(self._reactor, delay)

    async def _timed_attempt(self, call: _Call) -> TreqResponse:
        attempt = Deferred.fromCoroutine(self._attempt(call))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            attempt.cancel()

        timer = self._reactor.callLater(call.timeout, expire)
        try:
            return await attempt
        except Exception:
            if timed_out:
                raise RequestTimeout(call.url, call.timeout, call.method) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _attempt(self, call: _Call) -> TreqResponse:
        body = _BytesProducer(call.data) if isinstance(call.data, bytes) else call.data
        try:
            response = await self._treq.request(
                call.method,
                call.url,
                data=body,
                headers=call.headers,  # type: ignore[arg-type]
                params=call.params,  # type: ignore[arg-type]
                allow_redirects=call.follow_redirects and call.method in ("GET", "HEAD"),
                unbuffered=True,
                reactor=cast(Any, self._reactor),
            )
        except Exception as e:
            if _is_cancellation(e):
                # Agents report a cancelled request as ResponseNeverReceived or
                # ConnectingCancelledError; neither is the network's fault.
                raise CancelledError() from e
            if is_network_failure(e):
                raise NetworkError(call.url, _describe(e), call.method) from e
            raise
        if response.code in call.ok:
            return response
        try:
            error_body = await _read_prefix(response, self._max_error_body)
        except CancelledError:
            raise
        except Exception:  # the status is the news; a broken error body is not
            error_body = b""
        raise HTTPStatusError(response.code, error_body, call.url, call.method)


class _ClosablePool(HTTPConnectionPool):
    """A connection pool that, once closed, closes connections instead of keeping them.

    A request still in flight when the owner closes the pool finishes later;
    Twisted's pool would then cache its connection (with a 240 s timer) and
    leave it open behind a stopped service.
    """

    closed = False

    def _putConnection(self, key: Any, connection: Any) -> None:
        if self.closed:
            connection.transport.loseConnection()
            return
        super()._putConnection(key, connection)  # type: ignore[no-untyped-call]


@define
class HTTPClientFactory:
    """Makes every inter-component HTTP client, with one connection pool.

    ``tls`` is the client TLS policy (``IPolicyForHTTPS``) from the TLS
    configuration; when present, ``http://`` URLs become ``https://``. ``agent``
    replaces the pooled ``Agent`` (tests pass an in-memory agent; the reactor
    then need only provide ``IReactorTime``, though the type asks for all a pooled
    ``Agent`` uses). Call :meth:`close` when the owning service stops.
    """

    reactor: IClientReactor
    tls: IPolicyForHTTPS | None = field(default=None, kw_only=True)
    timeout: float = field(default=DEFAULT_TIMEOUT, kw_only=True, validator=validators.gt(0))
    retry: RetryPolicy = field(factory=RetryPolicy, kw_only=True)
    max_persistent_per_host: int = field(default=10, kw_only=True, validator=validators.ge(0))
    max_error_body: int = field(default=DEFAULT_MAX_ERROR_BODY, kw_only=True)
    agent: IAgent | None = field(default=None, kw_only=True)
    pool: HTTPConnectionPool = field(init=False)
    _treq: HTTPClient = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.pool = _ClosablePool(self.reactor, persistent=True)  # type: ignore[no-untyped-call]
        self.pool.maxPersistentPerHost = self.max_persistent_per_host
        agent = self.agent
        if agent is None:
            policy = self.tls if self.tls is not None else BrowserLikePolicyForHTTPS()  # type: ignore[no-untyped-call]
            agent = Agent(self.reactor, contextFactory=policy, pool=self.pool)  # type: ignore[no-untyped-call]
        self._treq = HTTPClient(agent)

    def client(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> KrakenHTTPClient:
        """A client sharing this factory's pool, optionally with its own timeout or retries."""
        return KrakenHTTPClient(
            self._treq,
            self.reactor,
            self.timeout if timeout is None else timeout,
            self.retry if retry is None else retry,
            self.tls is not None,
            self.max_error_body,
        )

    def close(self) -> Deferred[None]:
        """Close idle pooled connections (call from the owning service's ``stopService``).

        Requests in flight are left to finish (their owners cancel them), but
        their connections are closed when they do, not pooled. Fires when the
        idle connections are closed.
        """
        pool = cast(_ClosablePool, self.pool)
        pool.closed = True
        closed: Deferred[None] = pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return closed


class _BodyReader(Protocol):
    """Feed a response body to a callable, stopping at a byte limit."""

    def __init__(
        self,
        collector: Callable[[bytes], object],
        limit: int | None,
        truncate: bool,
        done: Deferred[int],
    ) -> None:
        self._collector = collector
        self._limit = limit
        self._truncate = truncate
        self._done: Deferred[int] | None = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:
            return
        if self._limit is not None and self.received + len(data) > self._limit:
            if not self._truncate:
                self._fail(BodyTooLarge(self._limit))
                return
            data = data[: self._limit - self.received]
        try:
            self._collector(data)
        except Exception as e:
            self._fail(e)
            return
        self.received += len(data)
        if self._truncate and self._limit is not None and self.received >= self._limit:
            self.stop()
            self._finish()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._done is None:
            return
        if reason is None or isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self._finish()
        else:
            self._fail(reason)

    def stop(self) -> None:
        """Stop receiving: the connection is dropped rather than drained."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done.callback(self.received)

    def _fail(self, reason: Failure | Exception) -> None:
        done, self._done = self._done, None
        self.stop()
        if done is not None:
            done.errback(reason)


def collect_body(
    response: IResponse, collector: Callable[[bytes], object], *, max_bytes: int | None = None
) -> Deferred[int]:
    """Stream the body of ``response`` into ``collector`` chunk by chunk; fire with its length.

    Nothing is buffered here. Fails with :class:`BodyTooLarge` (and drops the
    connection) past ``max_bytes``, with whatever ``collector`` raised, or with
    the transport's failure. Cancelling it drops the connection. The collector
    runs on the reactor thread: it should hand large writes to a thread (or
    write to a consumer that does) rather than block.
    """
    reader: _BodyReader | None = None

    def cancel(d: Deferred[int]) -> None:
        if reader is not None:
            reader._done = None
            reader.stop()

    done: Deferred[int] = Deferred(cancel)
    reader = _BodyReader(collector, max_bytes, False, done)
    response.deliverBody(reader)  # type: ignore[no-untyped-call]
    return done


def save_body(
    response: IResponse, file: IO[bytes], *, max_bytes: int | None = None
) -> Deferred[int]:
    """Write the body of ``response`` to an open binary file as it arrives; fire with its length.

    Each chunk is a small sequential write (a page-cache copy); for the blob
    store's piece writes use :func:`collect_body` with a collector of its own.
    """
    return collect_body(response, file.write, max_bytes=max_bytes)


def read_body(response: IResponse, max_bytes: int) -> Deferred[bytes]:
    """The whole body of ``response``, or :class:`BodyTooLarge` past ``max_bytes``."""
    return Deferred.fromCoroutine(_read_body(response, max_bytes))


async def _read_body(response: IResponse, max_bytes: int) -> bytes:
    if response.length is not UNKNOWN_LENGTH and response.length > max_bytes:
        response.deliverBody(_Discard())  # type: ignore[no-untyped-call]
        raise BodyTooLarge(max_bytes)
    chunks: list[bytes] = []
    await collect_body(response, chunks.append, max_bytes=max_bytes)
    return b"".join(chunks)


class _Discard(Protocol):
    """Take a body delivery only to stop it at once."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


async def _read_prefix(response: IResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body of ``response``; the rest is not read."""
    chunks: list[bytes] = []
    reader_done: Deferred[int] = Deferred()
    response.deliverBody(_BodyReader(chunks.append, limit, True, reader_done))  # type: ignore[no-untyped-call]
    await reader_done
    return b"".join(chunks)
