"""
Serving cached blobs over twisted.web: ``os.sendfile`` on plain TCP, threaded ``pread`` otherwise.

:func:`serve_blob` answers a GET or HEAD (with an optional single ``Range``)
for a blob of the store.  It holds a store reader for the whole response, so
cleanup and ``DELETE`` cannot remove the blob while it is being sent.

The body goes out through the producers every sender of file regions shares
(:mod:`kraken.io.sendfile`).  On a plain TCP connection (looking through the
listeners' connection-tracking wrapper, never through TLS) it is
:class:`~kraken.io.sendfile.SendfileProducer`: the status line and headers are
flushed into the connection's buffer, then the producer takes the connection
over from the HTTP channel for the body (the channel is registered again
after), page cache to socket.  ``sendfile`` of a blob that is not in the page
cache reads the disk on the reactor thread: daemons serve blobs they have just
downloaded or received (and so just written), which are.  Anywhere else (TLS,
in-memory test transports) :class:`~kraken.io.sendfile.ThreadedReadProducer`
reads chunks with ``pread`` through ``run_blocking`` and writes them to the
request, pausing when twisted.web's buffer is full.

A body cut short (the file ended early, a read or send failed) is logged and
the connection aborted, since the status is already out; a client that went
away ends the response quietly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger, LogLevel

from kraken.core import Digest
from kraken.http.ranges import parse_range
from kraken.io.runner import BlockingRunner
from kraken.io.sendfile import SendfileProducer, ThreadedReadProducer, sendfile_transport
from kraken.store import BlobReader, BlobStore

__all__ = ["serve_blob"]

log = Logger()


def _sendfile_connection(request: Any) -> Any | None:
    """The request's TCP connection if the body can go out with ``os.sendfile``, else None."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    connection = sendfile_transport(transport)
    return connection if connection is not None and connection.connected else None


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
        connection = _sendfile_connection(request) if use_sendfile else None
        producer: SendfileProducer | ThreadedReadProducer
        if connection is not None:
            request.write(b"")  # the status line and headers: buffered, they go first
            producer = SendfileProducer(connection, reader.fd, offset, length)
        else:
            producer = ThreadedReadProducer(request, reader.fd, offset, length, run_blocking)
        try:
            sent: int = await producer.start()
        except ConnectionLost:
            return producer.sent
        except CancelledError:
            raise
        except Exception as e:
            # The status and part of the body are out: only closing the connection tells
            # the client that the body is cut short.
            level = LogLevel.info if isinstance(e, ConnectionError) else LogLevel.warn
            log.emit(
                level,
                "serving {digest} stopped after {sent} of {length} bytes: {error}",
                digest=digest,
                sent=producer.sent,
                length=length,
                error=str(e) or repr(e),
            )
            abort = getattr(getattr(request, "channel", None), "transport", None)
            if abort is not None:
                abort.abortConnection()
            return producer.sent
        return sent
    finally:
        reader.close()
