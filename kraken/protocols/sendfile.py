"""
Zero-copy streaming of a file region to a TCP transport with ``os.sendfile``.

:class:`FileSender` is a pull producer (``IPullProducer``) registered on a
plain (non-TLS) Twisted TCP transport.  It calls ``os.sendfile`` on the
transport's socket only when the transport's own write buffer is empty (the
transport asks a pull producer for more exactly then), so bytes written to the
transport *before* :meth:`FileSender.start` (a header) go out first.  While
the sender runs, nobody else may write to the transport (the bytes would land
in the middle of the file's); the returned Deferred says when it is done.

Back-pressure is the socket's: ``sendfile`` on the non-blocking socket sends
what fits, and the sender waits for the transport to become writable again.
An optional ``shaper`` (bytes -> seconds to wait, e.g. a token bucket) limits
the rate in chunks of at most ``chunk`` bytes.

``sendfile`` reads the file's pages in the kernel on the calling (reactor)
thread, so the pages should be in the page cache: :func:`warm` (blocking, for
a worker thread) reads a region into the cache without copying it to user
space.  :func:`sendfile_socket` says whether a transport can be used at all;
otherwise write the bytes the ordinary way.

HTTP blob serving has a producer of its own on the same system call
(:class:`kraken.api.serving.SendfileProducer`): it takes over a twisted.web
response after its headers, so it drives the transport differently.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime
from zope.interface import implementer

#: Bytes per ``sendfile`` call without a shaper (the socket takes what fits).
DEFAULT_CHUNK: Final = 4 * 1024 * 1024
#: Bytes sent per writable event at most, so one transfer does not starve other connections.
TURN_BUDGET: Final = 8 * 1024 * 1024


@functools.cache
def _devnull() -> int:
    return os.open(os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))


def sendfile_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP transport that ``sendfile`` can use, else None (TLS, fakes)."""
    from twisted.internet import tcp

    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not hasattr(os, "sendfile"):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


def warm(fd: int, offset: int, count: int) -> None:
    """
    Read ``count`` bytes of ``fd`` at ``offset`` into the page cache (blocking; for a thread).

    Splices the region to ``/dev/null``, which makes the kernel read the
    pages without copying them to user space; errors are ignored (the
    ``sendfile`` that follows reports them).
    """
    end = offset + count
    with contextlib.suppress(OSError):
        while offset < end:
            n = os.sendfile(_devnull(), fd, offset, end - offset)
            if n <= 0:
                return
            offset += n


class FileShorter(EOFError):
    """The file ended before the region to send did."""


@implementer(IPullProducer)
class FileSender:
    """
    Sends ``count`` bytes of file descriptor ``fd`` from ``offset`` on a TCP transport.

    ``start()`` returns a Deferred firing with the count once every byte is in
    the socket, or failing (ConnectionLost when the connection goes, OSError,
    FileShorter); the producer is unregistered either way.  The caller owns
    ``fd`` and must keep it open until then.
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
        sock = sendfile_socket(transport)
        if sock is None:
            raise TypeError(f"cannot sendfile on {transport!r}")
        if shaper is not None and clock is None:
            raise TypeError("a shaper needs a clock")
        self.transport = transport
        self.socket_fd = sock.fileno()
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
        self.done: Deferred[int] = Deferred()
        self._registering = False
        self._finished = False

    def start(self) -> Deferred[int]:
        """Register on the transport and start sending once its buffer is empty."""
        self._registering = True
        try:
            self.transport.registerProducer(self, False)
        finally:
            self._registering = False
        if not self._finished:
            if self.left == 0:
                self._finish(None)
            else:
                # Whatever the transport buffered goes first; then it asks us.
                self.transport.startWriting()
        return self.done

    def resumeProducing(self) -> None:
        """The transport's buffer is empty and the socket writable: send what fits."""
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
                sent = -1
            except InterruptedError:
                continue
            except OSError as e:
                self._finish(e)
                return
            if sent == 0:
                self._finish(FileShorter(f"file ended {self.left} bytes early"))
                return
            if sent < 0:
                break
            self.offset += sent
            self.left -= sent
            budget -= sent
            if self.shaper is not None:
                self.allowed -= sent
            if sent < n:
                break  # the socket buffer is full: wait until it is writable
        if self.left:
            self.transport.startWriting()
        else:
            self._finish(None)

    def _after_wait(self) -> None:
        self.waiting = None
        if not self._finished:
            # Only send when the transport's buffer is empty: let it call us.
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
        if failure is None:
            self.done.callback(self.count)
        else:
            self.done.errback(failure)


__all__ = ["DEFAULT_CHUNK", "FileSender", "FileShorter", "sendfile_socket", "warm"]
