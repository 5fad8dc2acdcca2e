"""
The HTTP server side every daemon shares: decide on a request's head, read only what was accepted.

twisted.web's ``Site`` reads a whole request body (in memory, or a temporary file past
100 KB) before any resource sees the request, and waits for a request's head as long as
the client likes.  :class:`KrakenSite` is a ``Site`` whose channel and request:

* give every connection ``header_timeout`` seconds to send a complete request line and
  headers (from the connection's start, or from the first byte of a kept-alive
  connection's next request), and close a connection idle for ``idle_timeout``;
* answer a TLS ClientHello on a plain port with a plain-HTTP 400 and close at once
  (docker and skopeo then fall back to HTTP straight away), logging one line;
* once the head is in, ask the site's :class:`RequestGate` what to do with the body
  *before reading any of it*: refuse (an :class:`~kraken.http.errors.APIError`: 403 for a
  write without a client certificate, 405 for a write to a read-only surface, 413 for a
  ``Content-Length`` over the route's limit, 404 for an unknown upload, ...), buffer up
  to a limit in memory (control messages), or stream into a :class:`BodySink` (blob
  uploads go straight into their upload file, hashed on the way: no temporary copy).
  A chunked body is cut off the moment it passes its limit.

A refusal is written as a complete ``Connection: close`` response at once; the rest of
the body is read and dropped for at most ``linger`` seconds (so that the client sees the
answer rather than a reset) and the connection is then closed.  ``Expect: 100-continue``
is answered only for accepted bodies.

:class:`KleinRoutes` is the gate for a Klein application: it matches the head against
the app's own URL map and asks the plan registered for that route's endpoint, so the
route table is never written twice.

This module leans on three attributes of ``twisted.web.http.HTTPChannel`` that are not
public (``_command``, ``_path``, ``_version`` hold the request line while the headers
arrive); ``tests/http/test_server.py`` fails loudly if a Twisted upgrade changes them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import parse_qs, unquote_to_bytes

from attrs import frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from kraken.http.errors import (
    CORE_ERRORS,
    UNSUPPORTED,
    APIError,
    ErrorMap,
    ErrorRenderer,
    RegistryError,
    render_text,
)
from kraken.io.runner import BlockingRunner

__all__ = [
    "DEFAULT_LIMITS",
    "TLS_ANSWER",
    "BodyPlan",
    "BodySink",
    "KleinRoutes",
    "KrakenChannel",
    "KrakenRequest",
    "KrakenSite",
    "PayloadTooLarge",
    "RequestGate",
    "RequestHead",
    "RoutePlan",
    "ServerLimits",
    "StreamingSink",
    "body_sink",
    "read_only",
]

log = Logger()

TLS_ANSWER: Final = b"HTTP/1.0 400 Bad Request\r\n\r\nthis port speaks plain HTTP\n"
"""What a TLS ClientHello on a plain-HTTP port gets before the connection is closed."""

_TLS_HANDSHAKE_RECORD: Final = 0x16
_READ_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})


@frozen(kw_only=True)
class ServerLimits:
    """What one HTTP listener allows a client; seconds and bytes."""

    header_timeout: float = 10.0
    """Time to send a request line and all headers (slowloris)."""
    idle_timeout: float = 60.0
    """A connection with nothing received for this long is closed (also mid-body)."""
    max_connections: int = 1024
    """Open connections on the listener; beyond it a new one gets a 503 and is closed."""
    max_body: int = 1024 * 1024
    """Body limit of routes that name none (control messages, buffered in memory)."""
    linger: float = 2.0
    """How long the rest of a refused body is read and dropped before the connection closes."""


DEFAULT_LIMITS: Final = ServerLimits()


class PayloadTooLarge(APIError):
    """A request body longer than the route accepts (413)."""

    def __init__(self, limit: int, code: Any = None) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes", code=code)
        self.limit = limit


class BodySink(Protocol):
    """Where an accepted request body streams to; every method is called on the reactor thread."""

    def start(self, producer: Any, failed: Callable[[Failure], None]) -> None:
        """The body begins: ``producer`` is the connection to pause and resume for
        back-pressure; ``failed`` is called if the sink cannot go on (the request is then
        answered with that error and the connection closed)."""

    def write(self, data: bytes) -> None:
        """The next bytes of the body."""

    def end(self) -> None:
        """The whole body has arrived (the route runs next and awaits the sink)."""

    def abort(self, reason: Failure) -> None:
        """The body will never be complete (client gone, limit passed, refused)."""

    def done(self) -> Deferred[int]:
        """Fires with the bytes taken once all is stored; fails with the sink's error."""


@frozen
class BodyPlan:
    """What a gate accepts of a request's body: at most ``limit`` bytes, streamed to ``sink``
    (None: kept in memory as ``request.content``).  ``code`` is the registry error code of
    the 413 when the body is too large (None: by status)."""

    limit: int
    sink: BodySink | None = None
    code: Any = None


@frozen
class RequestHead:
    """A request as known once its headers are in, before any of its body."""

    method: bytes
    uri: bytes
    headers: Headers
    content_length: int | None
    """None for a chunked body."""
    request: Request
    """The request object (its ``transport`` tells TLS and client certificates)."""

    @property
    def path(self) -> bytes:
        """The URI without its query."""
        return self.uri.split(b"?", 1)[0]

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query arguments, as ``request.args`` will hold them."""
        query = self.uri.split(b"?", 1)[1] if b"?" in self.uri else b""
        return parse_qs(query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, latin-1 decoded."""
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    def arg(self, name: str) -> str | None:
        """The first value of query argument ``name``, UTF-8 decoded."""
        values = self.args.get(name.encode("ascii"))
        return values[0].decode("utf-8", "replace") if values else None


class RequestGate(Protocol):
    """Decides, on a request's head, whether and how its body is read."""

    def admit(self, head: RequestHead) -> BodyPlan:
        """The plan for the body; raise an :class:`APIError` to refuse the request."""


@frozen
class _AnyBody:
    limit: int

    def admit(self, head: RequestHead) -> BodyPlan:
        return BodyPlan(self.limit)


#: A route's plan: the head and the route's path arguments (as the route method gets them).
RoutePlan = Callable[[RequestHead, Mapping[str, Any]], BodyPlan]


@frozen
class KleinRoutes:
    """
    The gate of a Klein app: each request's head is matched against the app's URL map and
    the plan registered for its endpoint (the route method's name) decides; routes with no
    plan take ``default_limit`` bytes in memory, and so do requests that match no route
    (Klein answers those 404 or 405 after the small body is read).
    """

    app: Klein
    plans: Mapping[str, RoutePlan]
    default_limit: int = DEFAULT_LIMITS.max_body
    checks: Sequence[Callable[[RequestHead], None]] = ()
    """Run first, in order, for every request (e.g. the client-certificate check)."""

    def admit(self, head: RequestHead) -> BodyPlan:
        """Run the checks, then the route's plan."""
        for check in self.checks:
            check(head)
        path_info = b"/".join(unquote_to_bytes(s) for s in head.path[1:].split(b"/"))
        try:
            text = "/" + path_info.decode("utf-8")
        except UnicodeDecodeError:
            return BodyPlan(self.default_limit)
        adapter = self.app.url_map.bind("", path_info=text, default_method="GET")
        try:
            endpoint, arguments = adapter.match(text, method=head.method.decode("latin-1"))
        except HTTPException:
            return BodyPlan(self.default_limit)
        plan = self.plans.get(endpoint)
        if plan is None:
            return BodyPlan(self.default_limit)
        return plan(head, arguments)


def read_only(head: RequestHead) -> None:
    """A gate check for a read-only registry: 405 ``UNSUPPORTED`` for any write method."""
    if head.method not in _READ_METHODS:
        method = head.method.decode("latin-1")
        raise RegistryError(
            UNSUPPORTED,
            f"{method} is not supported: this registry is read-only",
            headers={"Allow": "GET, HEAD"},
        )


def body_sink(request: Any, plan: Callable[[RequestHead], BodyPlan]) -> BodySink:
    """
    The sink ``request``'s body streamed into: the one a :class:`KrakenSite`'s gate made on
    the head; under any other ``Site`` (StubTreq, an embedding application's own), which
    has buffered the whole body, ``plan`` is asked now and the buffered body fed to its
    sink, so a route has one code path.
    """
    sink: BodySink | None = getattr(request, "body_sink", None)
    if sink is not None:
        return sink
    content = request.content
    length = 0
    if content is not None:
        content.seek(0, 2)
        length = content.tell()
        content.seek(0)
    head = RequestHead(
        method=request.method.upper(),
        uri=request.uri,
        headers=request.requestHeaders,
        content_length=length,
        request=request,
    )
    accepted = plan(head)
    if length > accepted.limit:
        raise PayloadTooLarge(accepted.limit, accepted.code)
    if accepted.sink is None:
        raise RuntimeError("this route's body plan has no sink")
    sink = accepted.sink
    failures: list[Failure] = []
    sink.start(_NO_PRODUCER, failures.append)
    while content is not None and (chunk := content.read(1024 * 1024)):
        sink.write(chunk)
    sink.end()
    return sink


class _NoProducer:
    def pauseProducing(self) -> None:
        """Nothing to pause: the body is already buffered."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


_NO_PRODUCER: Final = _NoProducer()


class KrakenRequest(Request):
    """A request whose body goes where its :class:`BodyPlan` says, within its limit."""

    channel: Any
    content: Any

    plan: BodyPlan = BodyPlan(0)
    body_sink: BodySink | None = None
    refused: bool = False
    _received: int = 0

    def gotLength(self, length: int | None) -> None:
        """Called by the channel with the plan in place: prepare the in-memory buffer."""
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Count the bytes against the limit; pass them to the sink or the buffer."""
        if self.refused:
            return
        self._received += len(data)
        if self._received > self.plan.limit:
            self.channel.refuse(self, PayloadTooLarge(self.plan.limit, self.plan.code))
            return
        if self.body_sink is not None:
            self.body_sink.write(data)
        else:
            self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: end the sink, then process (nothing if refused)."""
        if self.refused:
            return
        if self.body_sink is not None:
            self.body_sink.end()
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def sink_failed(self, failure: Failure) -> None:
        """The sink cannot go on: answer with its error now, if still receiving."""
        if not self.refused and not self.finished and self.channel is not None:
            error = failure.value if failure.value is not None else Exception("sink failed")
            self.channel.refuse(self, error)

    def connectionLost(self, reason: Failure) -> None:
        """Abort a sink still receiving."""
        sink, self.body_sink = self.body_sink, None
        if sink is not None and not self.refused:
            sink.abort(reason)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class KrakenChannel(HTTPChannel):
    """An ``HTTPChannel`` with a header deadline, TLS refusal and decisions on the head."""

    transport: Any
    requests: list[Any]

    site: KrakenSite
    _head_call: IDelayedCall | None = None
    _linger_call: IDelayedCall | None = None
    _awaiting_head: bool = True
    _refused: bool = False
    _first_byte: bool = True

    def connectionMade(self) -> None:
        """Start the header deadline."""
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._start_head_timer()

    def _clock(self) -> IReactorTime:
        return self.site.clock

    def _start_head_timer(self) -> None:
        if self._head_call is None and self.site.limits.header_timeout:
            self._head_call = self._clock().callLater(
                self.site.limits.header_timeout, self._head_timed_out
            )

    def _stop_head_timer(self) -> None:
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()

    def _head_timed_out(self) -> None:
        self._head_call = None
        log.info(
            "closing {client}: no complete request head within {seconds} s",
            client=_peer(self.transport),
            seconds=self.site.limits.header_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Drop what follows a refusal; refuse a TLS hello; time the head."""
        if self._refused:
            return
        if self._first_byte and data:
            self._first_byte = False
            if data[0] == _TLS_HANDSHAKE_RECORD and not ISSLTransport.providedBy(self.transport):
                log.info("refusing a TLS handshake from {client}", client=_peer(self.transport))
                self._refused = True
                self.transport.write(TLS_ANSWER)
                self.transport.loseConnection()
                return
        if self._awaiting_head:
            self._start_head_timer()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        """Ask the gate about the body before reading it (replaces ``HTTPChannel``'s)."""
        self._stop_head_timer()
        self._awaiting_head = False
        req: KrakenRequest = self.requests[-1]
        req.parseCookies()  # type: ignore[no-untyped-call]
        self.persistent = self.checkPersistence(req, self._version)  # type: ignore[no-untyped-call]
        head = RequestHead(
            method=self._command.upper(),
            uri=self._path,
            headers=req.requestHeaders,
            content_length=self.length,
            request=req,
        )
        try:
            plan = self.site.gate.admit(head)
        except Exception as e:
            self.refuse(req, e)
            return
        req.plan = plan
        if self.length is not None and self.length > plan.limit:
            self.refuse(req, PayloadTooLarge(plan.limit, plan.code))
            return
        req.gotLength(self.length)
        if plan.sink is not None:
            req.body_sink = plan.sink
            plan.sink.start(self.transport, req.sink_failed)
        expect = req.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Request) -> None:
        """A kept-alive connection waits for its next head."""
        super().requestDone(request)  # type: ignore[no-untyped-call]
        self._awaiting_head = True

    def refuse(self, request: KrakenRequest, error: BaseException) -> None:
        """Answer ``request`` with ``error`` now and close, reading nothing more of it."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        request.refused = True
        sink, request.body_sink = request.body_sink, None
        if sink is not None:
            sink.abort(Failure(error))  # type: ignore[no-untyped-call]
        self._stop_head_timer()
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        api_error = self.site.errors.to_api_error(error)
        if api_error is None:
            log.failure("refusing a request", Failure(error))  # type: ignore[no-untyped-call]
            api_error = APIError(500, "internal server error")
        log.info(
            "refused {method} {uri} from {client} before reading its body: {status} {message}",
            method=request.method if request.method != b"(no method yet)" else self._command,
            uri=self._path[:200],
            client=_peer(self.transport),
            status=api_error.status,
            message=api_error.message,
        )
        self.transport.write(_response(api_error, self.site.renderer, self._command))
        if ITCPTransport.providedBy(self.transport) and not ISSLTransport.providedBy(
            self.transport
        ):
            # Half-close: the answer and a FIN go out; what the client still sends is read
            # and dropped (a close with unread data would reset the connection, and the
            # client might never see the answer), for ``linger`` seconds at most.
            self.transport.loseWriteConnection()
            self._linger_call = self._clock().callLater(self.site.limits.linger, self._abort)
        else:
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._linger_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the header deadline and the linger."""
        self._stop_head_timer()
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def _peer(transport: Any) -> str:
    try:
        return str(transport.getPeer())
    except Exception:
        return "?"


class _Headers:
    """Collects what a renderer sets on a response (for a refusal written by hand)."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}

    def setHeader(self, name: bytes | str, value: bytes) -> None:
        key = name if isinstance(name, bytes) else name.encode("latin-1")
        self.headers[key.lower()] = value


_REASONS: Final = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    411: b"Length Required",
    413: b"Payload Too Large",
    416: b"Range Not Satisfiable",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    507: b"Insufficient Storage",
}


def _response(error: APIError, renderer: ErrorRenderer, method: bytes) -> bytes:
    collected = _Headers()
    body = renderer(collected, error)  # type: ignore[arg-type]
    for name, value in error.headers.items():
        collected.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    body_out = b"" if method.upper() == b"HEAD" else body
    lines = [b"HTTP/1.1 %d %s" % (error.status, _REASONS.get(error.status, b"Error"))]
    for key, raw in collected.headers.items():
        if key not in (b"content-length", b"connection"):
            lines.append(key + b": " + raw)
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body_out


class KrakenSite(Site):
    """
    A ``Site`` of :class:`KrakenChannel` and :class:`KrakenRequest`.

    ``gate`` decides on each head (default: any body up to ``limits.max_body``, in memory);
    refusals are rendered through ``errors`` and ``renderer`` like the app's own errors.
    """

    protocol = KrakenChannel  # type: ignore[assignment]
    requestFactory = KrakenRequest
    quiet_paths: ClassVar[frozenset[bytes]] = frozenset({b"/health", b"/readiness", b"/metrics"})
    #: Path endings whose successful requests are polls, not logged either: the agent's
    #: ``/blobs/{digest}/status`` (``kraken blob pull --agent`` asks twice a second).
    quiet_endings: ClassVar[tuple[bytes, ...]] = (b"/status",)

    def __init__(
        self,
        resource: Any,
        *,
        clock: IReactorTime | None = None,
        gate: RequestGate | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
        errors: ErrorMap = CORE_ERRORS,
        renderer: ErrorRenderer = render_text,
        parse_forms: bool = True,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, timeout=limits.idle_timeout or None, parsePOSTFormSubmission=parse_forms
        )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.callLater = clock.callLater  # the channels' idle timeout (TimeoutMixin)
        self.gate: RequestGate = gate if gate is not None else _AnyBody(limits.max_body)
        self.limits = limits
        self.errors = errors
        self.renderer = renderer
        self.displayTracebacks = False

    def buildProtocol(self, addr: Any) -> Any:
        """A :class:`KrakenChannel` that knows this site."""
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        channel.site = self
        channel.callLater = self.clock.callLater
        return channel

    def log(self, request: Any) -> None:
        """Access-log ``request``, except successful health, readiness and metrics probes."""
        if request.code < 400 and (
            request.path in self.quiet_paths or request.path.endswith(self.quiet_endings)
        ):
            return
        super().log(request)


class StreamingSink:
    """
    A :class:`BodySink` that writes a body at ``offset`` through ``write_at`` in a thread.

    Bytes are gathered into batches of about ``batch`` bytes; one batch at a time goes to
    ``run(write_at, offset, chunks)`` (which may ``pwritev`` the chunks as they are: no
    copy) followed by ``feed(chunks)`` (hashing) in the same pool thread, so the order of
    writes and of hashing is the body's.  The connection is paused while more than
    ``high_water`` bytes wait, and resumed below half of it.  :meth:`done` fires with the
    bytes written once the body has ended and everything is on disk, or fails with the
    first write error.  ``aborted`` is called once if the body never completes.
    """

    def __init__(
        self,
        run: BlockingRunner,
        write_at: Callable[[int, list[bytes]], object],
        offset: int = 0,
        *,
        feed: Callable[[list[bytes]], object] | None = None,
        aborted: Callable[[], object] | None = None,
        batch: int = 4 * 1024 * 1024,
        high_water: int = 16 * 1024 * 1024,
    ) -> None:
        self.run = run
        self.write_at = write_at
        self.offset = offset
        self.feed = feed
        self.aborted = aborted
        self.batch = batch
        self.high_water = high_water
        self.written = 0
        self._submitted = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._busy = False
        self._ended = False
        self._error: Failure | None = None
        self._finished = False
        self._waiters: list[Deferred[int]] = []
        self._producer: Any = None
        self._failed: Callable[[Failure], None] | None = None
        self._paused = False

    def start(self, producer: Any, failed: Callable[[Failure], None]) -> None:
        """Remember the connection (back-pressure) and whom to tell of a write failure."""
        self._producer = producer
        self._failed = failed

    def write(self, data: bytes) -> None:
        """Queue ``data``; flush a full batch; pause the connection past the high water."""
        if self._finished or self._error is not None:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if not self._busy and self._pending_bytes >= self.batch:
            self._flush()
        if (
            not self._paused
            and self._producer is not None
            and self._pending_bytes >= self.high_water
        ):
            self._paused = True
            self._producer.pauseProducing()

    def end(self) -> None:
        """The body is complete: write what is left, then fire :meth:`done`."""
        self._ended = True
        if not self._busy:
            if self._pending:
                self._flush()
            else:
                self._finish()

    def abort(self, reason: Failure) -> None:
        """The body will not complete: drop what waits; :meth:`done` fails with ``reason``."""
        if self._finished:
            return
        self._pending, self._pending_bytes = [], 0
        if self._error is None:
            self._error = reason
        self._resume()
        if self.aborted is not None:
            aborted, self.aborted = self.aborted, None
            aborted()
        if not self._busy:
            self._finish()

    def done(self) -> Deferred[int]:
        """Fires with the bytes written when all is on disk; fails with the first error."""
        d: Deferred[int] = Deferred()
        if self._finished:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d

    def _fire(self, d: Deferred[int]) -> None:
        if self._error is not None:
            d.errback(self._error)
        else:
            d.callback(self.written)

    def _finish(self) -> None:
        self._finished = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _resume(self) -> None:
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    def _job(self, offset: int, chunks: list[bytes]) -> int:
        self.write_at(offset, chunks)
        if self.feed is not None:
            self.feed(chunks)
        return sum(map(len, chunks))

    def _flush(self) -> None:
        chunks, self._pending, size = self._pending, [], self._pending_bytes
        self._pending_bytes = 0
        offset = self.offset + self._submitted
        self._submitted += size
        self._busy = True
        self.run(self._job, offset, chunks).addCallbacks(self._job_done, self._job_failed)

    def _job_done(self, size: int) -> None:
        self._busy = False
        self.written += size
        if self._error is not None:
            self._finish()
            return
        if not self._ended and self._pending_bytes < self.high_water // 2:
            self._resume()
        if self._pending_bytes >= self.batch or (self._ended and self._pending):
            self._flush()
        elif self._ended:
            self._finish()

    def _job_failed(self, failure: Failure) -> None:
        self._busy = False
        first = self._error is None
        if first:
            self._error = failure
        self._pending, self._pending_bytes = [], 0
        if self.aborted is not None:
            aborted, self.aborted = self.aborted, None
            aborted()
        if first and not self._ended and self._failed is not None:
            self._failed(failure)
        self._finish()
