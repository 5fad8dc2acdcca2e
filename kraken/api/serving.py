"""
Serving cached blobs over twisted.web: ``os.sendfile`` on plain TCP, threaded ``pread`` otherwise.

:func:`serve_blob` answers a GET or HEAD (with an optional single ``Range``)
for a blob of the store.  It holds a store reader for the whole response, so
cleanup and ``DELETE`` cannot remove the blob while it is being sent.

On a plain TCP connection (the agent's registry port on 127.0.0.1) the body
goes from the page cache to the socket with ``os.sendfile``: the
:class:`SendfileProducer` replaces the HTTP channel as the transport's
producer for the duration of the body and is a *pull* producer, so the
transport asks it for more only when its own buffer (the response headers)
is empty and the socket is writable.  A ``sendfile`` that would block stops
the step and asks the transport to tell it when the socket is writable again
(``startWriting`` on an empty buffer makes the transport call
``resumeProducing`` once it is), which is the back-pressure.  Each step sends
at most :data:`SENDFILE_STEP` bytes, so one fast client cannot hold the
reactor.  ``sendfile`` of a blob that is not in the page cache reads the disk
on the reactor thread: the agent serves blobs it has just downloaded (and so
just written), which are.

Anywhere else (TLS, in-memory test transports) :class:`ThreadedReadProducer`
reads chunks with ``pread`` through ``run_blocking`` and writes them to the
request as a push producer, pausing when twisted.web's buffer is full.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.core import Digest
from kraken.http.ranges import parse_range
from kraken.io.runner import BlockingRunner
from kraken.store import BlobReader, BlobStore

__all__ = [
    "READ_CHUNK",
    "SENDFILE_STEP",
    "SendfileProducer",
    "ThreadedReadProducer",
    "sendfile_transport",
    "serve_blob",
]

#: Bytes sent per reactor step by :class:`SendfileProducer`.
SENDFILE_STEP: Final = 8 * 1024 * 1024
#: Bytes read per ``pread`` by :class:`ThreadedReadProducer`.
READ_CHUNK: Final = 1024 * 1024


def sendfile_transport(request: Any) -> Any | None:
    """The request's TCP transport if the body can go out with ``os.sendfile``, else None."""
    if not hasattr(os, "sendfile"):
        return None
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    # A listener that tracks its connections (kraken.services.parts.ConnectionsFactory)
    # puts a ProtocolWrapper between the channel and the socket: look through it. TLS is
    # a ProtocolWrapper too, and one whose bytes must never bypass it.
    while isinstance(transport, ProtocolWrapper):
        if isinstance(transport, TLSMemoryBIOProtocol):
            return None
        transport = transport.transport
    if isinstance(transport, tcp.Connection) and transport.connected:
        return transport
    return None


@implementer(IPullProducer)
class SendfileProducer:
    """Sends ``length`` bytes of ``fd`` from ``offset`` with ``os.sendfile`` (see module doc)."""

    log = Logger()

    def __init__(self, request: Any, transport: Any, fd: int, offset: int, length: int) -> None:
        self.request = request
        self.transport = transport
        self.fd = fd
        self.offset = offset
        self.left = length
        self.sent = 0
        self._channel: Any = None
        self._primed = False
        self._finished = False
        self.done: Deferred[int] = Deferred(lambda _: self._stop())

    def start(self) -> Deferred[int]:
        """Flush the headers, then take over the transport; fires with the bytes sent."""
        self.request.write(b"")  # the status line and headers, into the transport's buffer
        self._channel = self.transport.producer
        if self._channel is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        """The transport's buffer is empty: send the next step."""
        if self._finished:
            return
        if not self._primed:
            # Called from registerProducer: the headers may still be buffered.  Let the
            # transport write them; it calls again once its buffer is empty.
            self._primed = True
            self.transport.startWriting()
            return
        sock = self.transport.getHandle().fileno()
        budget = SENDFILE_STEP
        while self.left and budget > 0:
            try:
                n = os.sendfile(sock, self.fd, self.offset, min(self.left, budget))
            except BlockingIOError:
                break
            except OSError as e:
                self._fail(e)
                return
            if n == 0:
                self._fail(OSError(f"blob ended {self.left} bytes early"))
                return
            self.offset += n
            self.left -= n
            self.sent += n
            budget -= n
        if self.left:
            self.transport.startWriting()  # called back when the socket takes more
            return
        self._restore()
        self.done.callback(self.sent)

    def stopProducing(self) -> None:
        """The connection is gone (the transport already dropped us)."""
        if self._finished:
            return
        self._finished = True
        self.done.callback(self.sent)

    def _restore(self) -> None:
        self._finished = True
        if self.transport.producer is self:
            self.transport.unregisterProducer()
            if self._channel is not None and self.transport.connected:
                self.transport.registerProducer(self._channel, True)

    def _stop(self) -> None:
        self._restore()

    def _fail(self, error: Exception) -> None:
        self.log.info("sendfile stopped: {error}", error=str(error))
        self._restore()
        self.transport.abortConnection()
        self.done.callback(self.sent)


@implementer(IPushProducer)
class ThreadedReadProducer:
    """Reads chunks off the reactor thread and writes them to the request, with back-pressure."""

    log = Logger()

    def __init__(
        self,
        request: Any,
        reader: BlobReader,
        offset: int,
        length: int,
        run_blocking: BlockingRunner,
        *,
        chunk: int = READ_CHUNK,
    ) -> None:
        self.request = request
        self.reader = reader
        self.offset = offset
        self.left = length
        self.sent = 0
        self.run_blocking = run_blocking
        self.chunk = chunk
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False
        self.done: Deferred[int] = Deferred(lambda _: self._stop())

    def start(self) -> Deferred[int]:
        """Register with the request and start reading; fires with the bytes written."""
        self.request.registerProducer(self, True)
        self._pump()
        return self.done

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._reading or self._finished):
                if not self.left:
                    self._finish()
                    return
                self._reading = True
                d = self.run_blocking(self.reader.pread, min(self.chunk, self.left), self.offset)
                d.addCallbacks(self._got, self._failed)
        finally:
            self._pumping = False

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        if not data:
            self._failed(Failure(OSError(f"blob ended {self.left} bytes early")))  # type: ignore[no-untyped-call]
            return
        self.offset += len(data)
        self.left -= len(data)
        self.sent += len(data)
        self.request.write(data)
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if self._finished:
            return
        self.log.failure("reading a blob to serve", failure)
        self._finished = True
        self.request.unregisterProducer()
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self.done.callback(self.sent)

    def _finish(self) -> None:
        self._finished = True
        self.request.unregisterProducer()
        self.done.callback(self.sent)

    def _stop(self) -> None:
        if not self._finished:
            self._finished = True
            self.request.unregisterProducer()

    def pauseProducing(self) -> None:
        """twisted.web's buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """twisted.web's buffer drained."""
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The connection is gone."""
        if not self._finished:
            self._finished = True
            self.done.callback(self.sent)


async def serve_blob(
    request: Any,
    store: BlobStore,
    digest: Digest,
    run_blocking: BlockingRunner,
    *,
    content_type: bytes = b"application/octet-stream",
    headers: Mapping[bytes, bytes] | None = None,
    use_sendfile: bool = True,
) -> int:
    """
    Answer ``request`` (GET or HEAD) with the cached blob ``digest``; returns the body bytes sent.

    Raises :class:`~kraken.store.BlobNotFound` when the blob is not cached and
    :class:`~kraken.http.ranges.InvalidRange` (416) for a ``Range`` that cannot be
    served (before anything is written).  The blob stays open (undeletable)
    until the body is sent or the client goes away.
    """
    reader: BlobReader = await run_blocking(store.open_reader, digest)
    try:
        size = reader.size
        raw_range = request.getHeader(b"range")
        byte_range = parse_range(raw_range, size)
        offset, length = (0, size) if byte_range is None else (byte_range.start, byte_range.length)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Content-Length", b"%d" % length)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        if byte_range is not None:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", byte_range.content_range().encode())
        if request.method == b"HEAD" or length == 0:
            return 0
        transport = sendfile_transport(request) if use_sendfile else None
        producer: SendfileProducer | ThreadedReadProducer
        if transport is not None:
            producer = SendfileProducer(request, transport, reader.fd, offset, length)
        else:
            producer = ThreadedReadProducer(request, reader, offset, length, run_blocking)
        sent: int = await producer.start()
        return sent
    finally:
        reader.close()
