"""
Sending a region of an open file to a connection: ``os.sendfile``, else threaded reads.

Both users, HTTP blob responses (:func:`kraken.api.serving.serve_blob`) and peer pieces
(:class:`kraken.protocols.peer.PeerProtocol`), send with the same two producers, which
end the same way: the Deferred of ``start()`` fires with the byte count once every byte
is handed over, or fails with :class:`~twisted.internet.error.ConnectionLost` (the
connection went away), :class:`FileShorter` (the file ended before the region did) or
the ``OSError`` of a read or send.  The producer is unregistered either way; the caller
owns the descriptor and keeps it open until then.

:class:`SendfileProducer` is a pull producer registered on the plain TCP connection
itself (:func:`sendfile_transport` finds it, looking through wrappers that are not TLS).
The connection asks a pull producer for more only when its own write buffer is empty,
so bytes written before :meth:`~SendfileProducer.start` (a frame header, twisted.web's
status line and headers) go out first; while it runs nobody else may write to the
connection.  A producer already registered (twisted.web's channel) is put aside and
registered again afterwards.  Back-pressure is the socket's: ``sendfile`` on the
non-blocking socket sends what fits, and the producer waits for the connection to be
writable again.  At most :data:`TURN_BUDGET` bytes go per writable event, so one fast
receiver cannot hold the reactor; an optional ``shaper`` (bytes -> seconds to wait, a
token bucket) limits the rate in chunks of at most ``chunk`` bytes.

``sendfile`` reads the file's pages in the kernel on the reactor thread, so they should
be in the page cache: :func:`warm` (blocking, for a worker thread) reads a region into
the cache without copying it to user space.

:class:`ThreadedReadProducer` is the fallback wherever ``sendfile`` cannot go (TLS,
in-memory test transports): it reads chunks with ``pread`` through a
:class:`~kraken.io.runner.BlockingRunner` and writes them to any ``IConsumer`` as a push
producer, pausing while the consumer's buffer is full.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable
from typing import Any, Final

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.io.runner import BlockingRunner

__all__ = [
    "DEFAULT_CHUNK",
    "READ_CHUNK",
    "TURN_BUDGET",
    "FileShorter",
    "SendfileProducer",
    "ThreadedReadProducer",
    "sendfile_socket",
    "sendfile_transport",
    "warm",
]

#: Bytes sent per writable event at most, so one transfer does not starve other connections.
TURN_BUDGET: Final = 8 * 1024 * 1024
#: Bytes per ``sendfile`` call without a shaper (the socket takes what fits).
DEFAULT_CHUNK: Final = TURN_BUDGET
#: Bytes read per ``pread`` by :class:`ThreadedReadProducer`.
READ_CHUNK: Final = 1024 * 1024


class FileShorter(EOFError):
    """The file ended before the region to send did."""


@functools.cache
def _devnull() -> int:
    return os.open(os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))


def sendfile_socket(transport: Any) -> socket.socket | None:
    """
    The socket of ``transport`` if it is itself a plain TCP connection, else None (TLS, fakes).

    Does not look through wrappers: the peer protocol also reads this socket directly.
    """
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not hasattr(os, "sendfile"):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


def sendfile_transport(transport: Any) -> tcp.Connection | None:
    """
    The plain TCP connection under ``transport`` that ``sendfile`` can write to, else None.

    A listener that tracks its connections (``kraken.services.parts.ConnectionsFactory``)
    puts a ``ProtocolWrapper`` between a protocol and the socket: this looks through it.
    TLS is a ``ProtocolWrapper`` too, and one whose bytes must never bypass it: None.
    """
    while isinstance(transport, ProtocolWrapper):
        if isinstance(transport, TLSMemoryBIOProtocol):
            return None
        transport = transport.transport
    if sendfile_socket(transport) is None:
        return None
    connection: tcp.Connection = transport
    return connection


def warm(fd: int, offset: int, count: int) -> None:
    """
    Read ``count`` bytes of ``fd`` at ``offset`` into the page cache (blocking; for a thread).

    Splices the region to ``/dev/null``, which makes the kernel read the pages without
    copying them to user space; errors are ignored (the ``sendfile`` that follows
    reports them).
    """
    end = offset + count
    with contextlib.suppress(OSError):
        while offset < end:
            n = os.sendfile(_devnull(), fd, offset, end - offset)
            if n <= 0:
                return
            offset += n


@implementer(IPullProducer)
class SendfileProducer:
    """
    Sends ``count`` bytes of file descriptor ``fd`` from ``offset`` with ``os.sendfile``.

    ``transport`` is a plain TCP connection, possibly behind wrappers that are not TLS
    (see :func:`sendfile_transport`); anything else is a ``TypeError``.
    """

    def __init__(
        self,
        transport: Any,
        fd: int,
        offset: int,
        count: int,
        *,
        chunk: int = DEFAULT_CHUNK,
        shaper: Callable[[int], float] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        connection = sendfile_transport(transport)
        if connection is None:
            raise TypeError(f"cannot sendfile on {transport!r}")
        if shaper is not None and clock is None:
            raise TypeError("a shaper needs a clock")
        self.transport: Any = connection
        self.socket_fd = connection.getHandle().fileno()
        self.fd = fd
        self.offset = offset
        self.left = count
        self.count = count
        self.chunk = chunk
        self.shaper = shaper
        self.clock = clock
        #: bytes the shaper already allowed (after a wait) but not yet sent.
        self.allowed = 0
        self.waiting: IDelayedCall | None = None
        self.done: Deferred[int] = Deferred(lambda _: self._finish(CancelledError()))
        #: the producer that was registered before (twisted.web's channel) and its kind.
        self._previous: tuple[IProducer, bool] | None = None
        self._registering = False
        self._finished = False

    @property
    def sent(self) -> int:
        """Bytes handed to the socket so far."""
        return self.count - self.left

    def start(self) -> Deferred[int]:
        """Register on the connection and send once its buffer is empty (see module doc)."""
        previous = self.transport.producer
        if previous is not None:
            self._previous = (previous, bool(self.transport.streamingProducer))
            self.transport.unregisterProducer()
        # registerProducer asks a pull producer for data at once: too early, the
        # connection may still hold bytes written before us.
        self._registering = True
        try:
            self.transport.registerProducer(self, False)
        finally:
            self._registering = False
        if not self._finished:
            if self.left == 0:
                self._finish(None)
            else:
                # Whatever the connection buffered goes first; then it asks us.
                self.transport.startWriting()
        return self.done

    def resumeProducing(self) -> None:
        """The connection's buffer is empty and the socket writable: send what fits."""
        if self._registering or self._finished or self.waiting is not None:
            return
        self._send()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._finish(ConnectionLost("connection lost while sending a file"))

    def _send(self) -> None:
        budget = TURN_BUDGET
        while self.left and budget > 0:
            n = min(self.chunk, self.left)
            if self.shaper is not None:
                if not self.allowed:
                    delay = self.shaper(n)
                    self.allowed = n
                    if delay > 0:
                        assert self.clock is not None
                        self.waiting = self.clock.callLater(delay, self._after_wait)
                        return
                n = min(n, self.allowed)
            try:
                sent = os.sendfile(self.socket_fd, self.fd, self.offset, n)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                self._finish(e)
                return
            if sent == 0:
                self._finish(FileShorter(f"file ended {self.left} bytes early"))
                return
            self.offset += sent
            self.left -= sent
            budget -= sent
            if self.shaper is not None:
                self.allowed -= sent
            if sent < n:
                break  # the socket buffer is full: wait until it is writable
        if self.left:
            self.transport.startWriting()  # called again once the socket takes more
        else:
            self._finish(None)

    def _after_wait(self) -> None:
        self.waiting = None
        if not self._finished:
            # Only send when the connection's buffer is empty: let it call us.
            self.transport.startWriting()

    def _finish(self, failure: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self.waiting is not None and self.waiting.active():
            self.waiting.cancel()
        self.waiting = None
        if self.transport.producer is self:
            self.transport.unregisterProducer()
            if self._previous is not None and self.transport.connected:
                self.transport.registerProducer(*self._previous)
        if failure is None:
            self.done.callback(self.count)
        else:
            self.done.errback(failure)


@implementer(IPushProducer)
class ThreadedReadProducer:
    """
    Writes ``count`` bytes of ``fd`` from ``offset`` to ``consumer``, read off the reactor thread.

    Reads ``chunk`` bytes at a time with ``os.pread`` through ``run_blocking``, one read
    in flight, none while the consumer has paused it.
    """

    def __init__(
        self,
        consumer: IConsumer,
        fd: int,
        offset: int,
        count: int,
        run_blocking: BlockingRunner,
        *,
        chunk: int = READ_CHUNK,
    ) -> None:
        self.consumer = consumer
        self.fd = fd
        self.offset = offset
        self.left = count
        self.count = count
        self.run_blocking = run_blocking
        self.chunk = chunk
        self.done: Deferred[int] = Deferred(lambda _: self._finish(CancelledError()))
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False

    @property
    def sent(self) -> int:
        """Bytes written to the consumer so far."""
        return self.count - self.left

    def start(self) -> Deferred[int]:
        """Register with the consumer and start reading."""
        self.consumer.registerProducer(self, True)
        self._pump()
        return self.done

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._reading or self._finished):
                if not self.left:
                    self._finish(None)
                    return
                self._reading = True
                d = self.run_blocking(os.pread, self.fd, min(self.chunk, self.left), self.offset)
                d.addCallbacks(self._got, self._failed)
        finally:
            self._pumping = False

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        if not data:
            self._finish(FileShorter(f"file ended {self.left} bytes early"))
            return
        self.offset += len(data)
        self.left -= len(data)
        self.consumer.write(data)
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._finish(failure)

    def _finish(self, failure: BaseException | Failure | None, *, unregister: bool = True) -> None:
        if self._finished:
            return
        self._finished = True
        if unregister:
            self.consumer.unregisterProducer()
        if failure is None:
            self.done.callback(self.count)
        else:
            self.done.errback(failure)

    def pauseProducing(self) -> None:
        """The consumer's buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The consumer's buffer drained."""
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The connection is gone (the consumer is dropping us itself)."""
        self._finish(ConnectionLost("connection lost while sending a file"), unregister=False)
