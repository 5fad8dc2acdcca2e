"""
The peer wire protocol on Twisted, driving the sans-IO :class:`~kraken.torrent.scheduler.Scheduler`.

Frames are ``Int32StringReceiver`` strings (docs/protocol.md); the raw bytes
after a PIECE_PAYLOAD header are not framed: the protocol switches to raw
mode and receives them into one preallocated ``bytearray`` (reused through a
:class:`BufferPool`; on plain TCP with ``recv_into`` straight from the
socket).  Verifying (sha256) and writing a received piece, and reading a
piece to send, run in a thread through the injected ``run_blocking`` (pieces
of one torrent hash in parallel and are written one at a time); the reactor
thread only copies bytes between the socket and buffers.  Sending a piece
that the storage can give as a file region
(:class:`~kraken.torrent.archive.IPieceFiles`) on a plain TCP connection uses
``os.sendfile`` (:class:`~kraken.io.sendfile.SendfileProducer`): a worker
thread opens the region and reads it into the page cache, then the reactor
thread only moves pages from the cache to the socket in bounded non-blocking
calls.  Otherwise the piece is read in a thread and written by a
push producer that pauses when the transport's buffer is full; so it is under
peer TLS (``tls``, where the protocol's transport is a ``TLSMemoryBIOProtocol``, and
neither ``recv_into`` nor ``sendfile`` can apply).  Control frames
written while a piece is streaming are held and sent after it (they would
otherwise land in the middle of the raw payload).

:class:`PeerNode` performs the engine's actions; :class:`PeerFactory` builds
protocols for a listening port; ``run_blocking`` is a :mod:`kraken.io.runner` runner.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Final, TypeVar

from attrs import frozen
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.core import Digest, InfoHash, MetaInfo, PeerInfo
from kraken.io.reactor import IClientReactor
from kraken.io.runner import BlockingRunner
from kraken.io.sendfile import SendfileProducer, sendfile_socket, sendfile_transport, warm
from kraken.io.singleflight import SingleFlight
from kraken.protocols.peer_metrics import PeerMetrics
from kraken.torrent.actions import (
    Action,
    Announce,
    Close,
    Commit,
    ConnId,
    Dial,
    Send,
    SendPiece,
    TorrentDropped,
)
from kraken.torrent.archive import (
    IArchive,
    IPieceFiles,
    IPieceStorage,
    PieceFile,
    PieceHashMismatch,
    verify_and_write,
)
from kraken.torrent.bandwidth import BandwidthLimiter
from kraken.torrent.dispatch import PayloadVerdict
from kraken.torrent.messages import (
    MAX_FRAME,
    Handshake,
    MalformedMessage,
    Message,
    PiecePayload,
    decode,
)
from kraken.torrent.scheduler import HandshakeRejected, Scheduler

T = TypeVar("T")

#: Runs a blocking function off the reactor thread: ``run_blocking(f, *args) -> Deferred``.


class ConnectionState(Enum):
    """Where a peer connection is: handshaking, opening the torrent's storage, exchanging
    pieces, or closed."""

    HANDSHAKE = "handshake"
    OPENING = "opening"
    ACTIVE = "active"
    CLOSED = "closed"


#: Seconds each side waits for the other's handshake.
HANDSHAKE_TIMEOUT: Final = 5.0
#: Chunk written per step when no bandwidth limit applies (fewer, bigger writes).
UNLIMITED_CHUNK: Final = 1024 * 1024
#: Read size and write high-water mark of a TCP transport carrying pieces.
SOCKET_BUFFER: Final = 1024 * 1024
#: Bytes of idle piece buffers a node keeps for reuse (8 x 8 MiB pieces).
BUFFER_POOL_BYTES: Final = 64 * 1024 * 1024
#: Bytes of received pieces waiting to be verified and written above which a
#: node stops reading its connections (until half of it is written).
MAX_UNWRITTEN: Final = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
#: While a piece payload streams in, the socket wakes the reactor only once this many
#: bytes (or the payload's rest) are buffered (``SO_RCVLOWAT``).
PAYLOAD_RCVLOWAT: Final = 128 * 1024


#: ``run_blocking`` that runs in the calling thread (tests and in-memory swarms).


#: Opens a TCP connection of ``protocol`` to ``peer``; fires when connected.
Connector = Callable[[PeerInfo, "PeerProtocol"], Deferred[Any]]
#: Announces to the tracker; fires with (peers, interval seconds).
Announcer = Callable[[Announce], Deferred[tuple[Sequence[PeerInfo], float]]]
#: Told of each peer we dialled that refused, timed out or never answered our handshake:
#: (blob, torrent, peer, reason); the agent reports them to the tracker (issue 18).
Unreachable = Callable[[Digest, InfoHash, PeerInfo, str], object]


@frozen
class _Opened:
    storage: IPieceStorage
    have: Any
    complete: bool


def _open_storage(storage: IPieceStorage) -> _Opened:
    return _Opened(storage, storage.bitfield(), storage.complete())


def _prepare_send(storage: IPieceStorage, index: int, zero_copy: bool) -> PieceFile | bytes:
    """Blocking (a worker thread): the piece as a file region in the page cache, or its bytes."""
    if zero_copy and IPieceFiles.providedBy(storage):
        region = storage.open_piece(index)
        if region is not None:
            try:
                warm(region.fd, region.offset, region.length)
            except BaseException:
                region.close()
                raise
            return region
    return storage.read_piece(index)


class BufferPool:
    """
    Piece buffers for reuse, by size (reactor thread only).

    Allocating a zeroed 8 MiB ``bytearray`` per received piece cost the
    reactor thread as much as receiving it (fresh pages fault and are
    zeroed); a buffer comes back here once its piece is written or dropped.
    Every byte of a reused buffer is overwritten before it is verified.
    """

    def __init__(self, max_bytes: int = BUFFER_POOL_BYTES) -> None:
        self.max_bytes = max_bytes
        self.idle_bytes = 0
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes (contents undefined)."""
        free = self._free.get(size)
        if free:
            self.idle_bytes -= size
            return free.pop()
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        """Return a buffer nobody uses any more (dropped when the pool is full)."""
        if self.idle_bytes + len(buf) <= self.max_bytes:
            self._free.setdefault(len(buf), []).append(buf)
            self.idle_bytes += len(buf)


def address_key(address: object) -> str | None:
    """
    What the engine's per-address limit counts an incoming connection under.

    An IPv4 address as is (also when mapped into IPv6); an IPv6 address by its
    /64, because one host commonly holds a whole /64; None for other transports
    (no limit).
    """
    if isinstance(address, IPv4Address):
        return address.host
    if isinstance(address, IPv6Address):
        ip = ipaddress.IPv6Address(address.host.split("%", 1)[0])
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return None


def _why(reason: Failure | None) -> str:
    return "connection lost" if reason is None else str(reason.value)


@implementer(IPushProducer)
class _PieceSender:
    """Streams one piece's bytes (already read) to the transport, honouring back-pressure."""

    def __init__(self, proto: PeerProtocol, index: int, data: bytes) -> None:
        self.proto = proto
        self.index = index
        self.data = data
        self.offset = 0
        self.paused = False
        self.waiting: IDelayedCall | None = None
        self.done = False

    def start(self) -> None:
        transport = self.proto.raw_transport()
        transport.registerProducer(self, True)
        self.proto.write_frame_now(PiecePayload(self.index, len(self.data)).encode())
        self._run()

    def _run(self) -> None:
        self.waiting = None
        node = self.proto.node
        shaped = node.bandwidth.egress is not None
        chunk = node.bandwidth.send_chunk(UNLIMITED_CHUNK)
        transport = self.proto.raw_transport()
        while not self.paused and not self.done and transport is not None:
            end = min(self.offset + chunk, len(self.data))
            n = end - self.offset
            if shaped:
                delay = node.bandwidth.send_delay(n)
                if delay > 0:
                    self.waiting = node.reactor.callLater(delay, self._send_after_wait, end)
                    return
            self._write(end)
        return

    def _send_after_wait(self, end: int) -> None:
        self.waiting = None
        self._write(end)
        if not self.paused:
            self._run()

    def _write(self, end: int) -> None:
        transport = self.proto.raw_transport()
        piece = self.data[self.offset : end]
        self.offset = end
        if self.offset >= len(self.data):
            self.done = True
            self.data = b""
        transport.write(piece)
        if self.done:
            transport.unregisterProducer()
            self.proto.piece_sent(self.index, end)

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport drained."""
        self.paused = False
        if self.waiting is None and not self.done:
            self._run()

    def stopProducing(self) -> None:
        """The connection is closing."""
        self.done = True
        self.data = b""
        if self.waiting is not None and self.waiting.active():
            self.waiting.cancel()
        self.waiting = None


class PeerProtocol(Int32StringReceiver):
    """One peer connection (either direction); framing plus raw piece payloads."""

    MAX_LENGTH = MAX_FRAME
    log = Logger()

    def __init__(self, node: PeerNode, dial: Dial | None = None) -> None:
        self.node = node
        self.dial = dial
        self.conn: ConnId | None = dial.conn if dial is not None else None
        self.infohash: InfoHash | None = dial.infohash if dial is not None else None
        #: OPENING: the acceptor is looking the blob up (opening its storage).
        self.state = ConnectionState.HANDSHAKE
        self._buffer = b""
        self._raw: bytearray | None = None
        self._raw_view: memoryview | None = None
        self._raw_index = -1
        self._raw_left = 0
        self._raw_pos = 0
        self._timer: IDelayedCall | None = None
        #: Pending resume after an ingress-limit pause (one at a time).
        self._resume_call: IDelayedCall | None = None
        self._sender: _PieceSender | SendfileProducer | None = None
        #: control frames written while a piece streams, sent after it.
        self._held: list[bytes] = []
        #: control frames held while the node runs the engine's actions (see PeerNode.run).
        self._out: list[bytes] = []
        #: the plain TCP socket (frames are written to it directly when idle), else None.
        self._sock: Any = None
        #: the socket's ``SO_RCVLOWAT`` as last set.
        self._lowat = 1
        #: the highest mark this socket's receive buffer allows (see _set_lowat).
        self._lowat_cap = PAYLOAD_RCVLOWAT
        #: fires when the connection is gone (PeerNode.stop waits for it).
        self.lost: Deferred[None] = Deferred()
        #: payload bytes arrived since the node's last tick (the engine's stall clock).
        self.payload_bytes = False

    def raw_transport(self) -> Any:
        """The transport (a TCP or in-memory one: producers, pause, abort)."""
        return self.transport

    def write_frame(self, body: bytes) -> None:
        """Write one length-prefixed frame (after the piece being streamed, if any)."""
        if self._sender is not None:
            self._held.append(_HEADER.pack(len(body)) + body)
            return
        if self.node.cork(self):
            self._out.append(_HEADER.pack(len(body)) + body)
            return
        self._write(_HEADER.pack(len(body)) + body)

    def flush(self) -> None:
        """Write the frames held during the node's run (in one call)."""
        out, self._out = self._out, []
        if out and self.state != ConnectionState.CLOSED and self.transport is not None:
            self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        """
        Write ``data``: straight to the socket when the transport has nothing queued.

        Twisted's ``write`` queues the bytes, registers the socket for writing and
        sends them on the reactor's next turn; for a control frame on an idle
        connection (most frames) that is two ``epoll_ctl`` calls and a turn of the
        loop per frame.  What the socket does not take goes the ordinary way, so
        the order of bytes is kept.
        """
        transport = self.raw_transport()
        sock = self._sock
        if (
            sock is not None
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
            and transport.producer is None
            and transport.connected
            and not transport.disconnecting
        ):
            try:
                n = sock.send(data)
            except OSError:
                n = 0  # EAGAIN, or an error the transport's own write will report
            if n == len(data):
                return
            data = data[n:]
        transport.write(data)

    def write_frame_now(self, body: bytes) -> None:
        """Write one frame at once (a PIECE_PAYLOAD header, by the piece's sender)."""
        if self._out:
            self.flush()  # frames the engine sent before the piece go before it
        self._write(_HEADER.pack(len(body)) + body)

    # -- connection lifecycle --------------------------------------------------

    def connectionMade(self) -> None:
        """Dialler: send our handshake.  Both: wait for the other's, with a timeout."""
        self.node.live.add(self)
        transport = self.raw_transport()
        if isinstance(getattr(transport, "bufferSize", None), int):
            # TCP transports read (and buffer writes) in bufferSize steps, 64 KiB by
            # default: 1 MiB cuts the per-call overhead of streaming pieces by 16.
            transport.bufferSize = SOCKET_BUFFER
        if hasattr(transport, "setTcpNoDelay"):
            # Frames are written whole, so Nagle's algorithm has nothing to coalesce; it
            # only holds a piece request back until the peer ACKs what we sent before,
            # which a peer with nothing left to send delays (bench.pair under the agents'
            # default bandwidth limit: 67-96 MB/s with Nagle, 451-465 without).  Go, which the
            # original Kraken is written in, sets TCP_NODELAY on every connection.
            transport.setTcpNoDelay(True)
        self._sock = sendfile_socket(transport)
        self._install_recv_into(transport)
        self._timer = self.node.reactor.callLater(
            self.node.handshake_timeout, self._handshake_timeout
        )
        if self.dial is not None:
            if self.dial.conn not in self.node.scheduler.conns:
                self.close("dial cancelled")
                return
            self.write_frame(self.node.scheduler.handshake_for(self.dial.infohash).encode())

    def _install_recv_into(self, transport: Any) -> None:
        """
        On a plain TCP transport, receive piece payloads with ``recv_into`` the piece buffer.

        Replaces the transport's ``doRead`` on this instance only: while a
        payload is being received into a buffer the socket is read straight
        into the buffer, at most the payload's remaining bytes and
        SOCKET_BUFFER per call (the limiter's chunk under an ingress limit, which is
        charged after each read as in :meth:`dataReceived`).  Otherwise
        (frames, and whatever follows them in the socket: with small pieces
        that is most payload bytes) it reads as much into the node's
        reusable read buffer and hands a view of it to ``dataReceived``,
        which copies out what it keeps.  Twisted's own
        ``doRead`` allocates a 1 MiB ``bytes`` per read, whose pages glibc
        kept returning to the kernel (~200,000 page faults per GiB
        received, measured); bench.pair with 256 KiB pieces spent 10 % of
        the downloader's samples in that read.
        """
        sock = sendfile_socket(transport)
        if sock is None:
            return
        twisted_read = transport.doRead
        scratch = self.node.read_buffer()

        def doRead() -> Any:
            if self.state == ConnectionState.CLOSED:
                return twisted_read()
            view = self._raw_view
            shaped = self.node.bandwidth.ingress is not None
            chunk = self.node.bandwidth.receive_chunk(SOCKET_BUFFER)
            try:
                if view is None:
                    n = sock.recv_into(scratch, chunk)
                else:
                    n = sock.recv_into(view[self._raw_pos :], min(self._raw_left, chunk))
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return CONNECTION_LOST
            if not n:
                return CONNECTION_DONE
            if view is None:
                result = transport.protocol.dataReceived(scratch[:n])
            else:
                self.payload_bytes = True
                self._raw_pos += n
                self._raw_left -= n
                if shaped:
                    self._shape_ingress(n)
                if not self._raw_left:
                    self._payload_done()
                result = None
            lowat = min(self._raw_left, self._lowat_cap) or 1
            if lowat != self._lowat:
                self._set_lowat(sock, lowat)
            return result

        transport.doRead = doRead

    def _set_lowat(self, sock: socket.socket, lowat: int) -> None:
        """
        Wake the reactor for this socket only once ``lowat`` bytes are buffered.

        While a payload streams in at a shaped rate, each wake-up would otherwise
        read a few segments (bench.swarm: ~11 KB per ``recv`` on average); with the
        mark at 64-128 KiB the agent reads a 256 KiB piece in two to four calls.  The
        mark never exceeds the payload's rest, and it is back at 1 when the payload
        ends, so a frame is never left waiting in the socket (unless the engine closed
        the connection as the payload ended: a closing connection reads no more).
        Nor does it exceed a half of the socket's receive buffer: Linux grows the
        buffer to hold a higher mark and clamps the receive window to the mark while
        doing so.
        """
        if self.state == ConnectionState.CLOSED:
            return
        try:
            if lowat > 1 and self._lowat == 1:
                # A payload begins: how high may the mark go on this socket now?
                rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                self._lowat_cap = max(1, min(PAYLOAD_RCVLOWAT, rcvbuf // 2))
            lowat = min(lowat, self._lowat_cap)
            if lowat != self._lowat:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            return
        self._lowat = lowat

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.dial is not None and self.state == ConnectionState.HANDSHAKE:
            self.node.unreachable_peer(self.dial, "handshake timed out")
        self.fail("handshake timed out")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Tell the engine unless it closed us; a partial payload is dropped."""
        self.node.live.discard(self)
        if not self.lost.called:
            self.lost.callback(None)
        self._cancel_timer()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        self._drop_raw()
        if self._sender is not None:
            self._sender.stopProducing()
            self._sender = None
        was = self.state
        self.state = ConnectionState.CLOSED
        if self.conn is not None and self.node.protocols.get(self.conn) is self:
            del self.node.protocols[self.conn]
            if was == ConnectionState.ACTIVE:
                self.node.run(self.node.scheduler.conn_lost(self.conn, _why(reason)))
            else:
                self.node.run(self.node.scheduler.dial_failed(self.conn, _why(reason)))

    def close(self, reason: str, abort: bool = False) -> None:
        """Close from our side (the engine already forgot this connection)."""
        if self.state == ConnectionState.CLOSED:
            return
        self.log.debug("closing peer connection: {reason}", reason=reason)
        if self._out and not abort:
            self.flush()
        self._out = []
        self.state = ConnectionState.CLOSED
        self._cancel_timer()
        self._drop_raw()
        if self.transport is not None:
            if abort:
                self.raw_transport().abortConnection()
            else:
                self.raw_transport().loseConnection()

    def fail(self, reason: str) -> None:
        """A protocol violation or a handshake failure: report to the engine and abort."""
        if self.state == ConnectionState.CLOSED:
            return
        if self.conn is not None and self.node.protocols.get(self.conn) is self:
            if self.state == ConnectionState.ACTIVE:
                actions = self.node.scheduler.protocol_error(self.conn, reason)
            else:
                del self.node.protocols[self.conn]
                actions = self.node.scheduler.dial_failed(self.conn, reason)
            self.node.run(actions)
        self.close(reason, abort=True)

    # -- receiving -------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        """A frame longer than MAX_LENGTH: the peer is broken or hostile."""
        self.fail(f"frame of {length} bytes exceeds {self.MAX_LENGTH}")

    def _shape_ingress(self, n: int) -> None:
        """``n`` payload bytes were read: pause reading for as long as the ingress limit says."""
        delay = self.node.bandwidth.receive_delay(n)
        if delay > 0 and self.transport is not None:
            self.raw_transport().pauseProducing()
            if self._resume_call is not None and self._resume_call.active():
                self._resume_call.cancel()
            self._resume_call = self.node.reactor.callLater(delay, self._resume_reading)

    def dataReceived(self, data: bytes | memoryview) -> None:
        """
        Split frames; in raw mode copy payload bytes straight into the piece buffer.

        ``data`` may be a view of a buffer that is reused once this returns: whatever
        is kept (a partial frame, a frame's body, payload bytes) is copied out.  The
        payload bytes among ``data`` (also those behind a PIECE_PAYLOAD header in the
        same read) are charged to the ingress limit, and nothing else.
        """
        view = memoryview(data)
        payload = 0
        while view and self.state != ConnectionState.CLOSED:
            if self._raw_left:
                self.payload_bytes = True
                n = min(self._raw_left, len(view))
                if self._raw_view is not None:
                    self._raw_view[self._raw_pos : self._raw_pos + n] = view[:n]
                self._raw_pos += n
                self._raw_left -= n
                payload += n
                view = view[n:]
                if not self._raw_left:
                    self._payload_done()
                continue
            if self._buffer:
                buf = self._buffer + view.tobytes()
                view = memoryview(buf)
                self._buffer = b""
            if len(view) < 4:
                self._buffer = view.tobytes()
                break
            (length,) = _HEADER.unpack_from(view)
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                break
            if len(view) < 4 + length:
                self._buffer = view.tobytes()
                break
            frame = view[4 : 4 + length].tobytes()
            view = view[4 + length :]
            self.stringReceived(frame)
        if (
            payload
            and self.node.bandwidth.ingress is not None
            and self.state != ConnectionState.CLOSED
        ):
            self._shape_ingress(payload)

    def _resume_reading(self) -> None:
        self._resume_call = None
        if self.node.writes_behind:
            return  # the node resumes us when its writes catch up
        if self.state != ConnectionState.CLOSED and self.transport is not None:
            self.raw_transport().resumeProducing()

    def pause_reading(self) -> None:
        """Stop reading the socket (the node's writes are behind)."""
        if self.state == ConnectionState.ACTIVE and self.transport is not None:
            self.raw_transport().pauseProducing()

    def resume_reading(self) -> None:
        """Read again, unless an ingress limit still holds us."""
        call = self._resume_call
        if call is not None and call.active():
            return
        if self.state == ConnectionState.ACTIVE and self.transport is not None:
            self.raw_transport().resumeProducing()

    def stringReceived(self, string: bytes) -> None:
        """One frame body."""
        try:
            msg = decode(string)
        except MalformedMessage as e:
            self.fail(str(e))
            return
        if self.state == ConnectionState.HANDSHAKE:
            if not isinstance(msg, Handshake):
                self.fail(f"expected a handshake, got {type(msg).__name__}")
                return
            self._cancel_timer()
            if self.dial is not None:
                self.state = ConnectionState.ACTIVE
                assert self.conn is not None
                self.node.run(self.node.scheduler.dial_succeeded(self.conn, msg))
            else:
                self.state = ConnectionState.OPENING
                self.node.incoming(self, msg)
            return
        if self.state != ConnectionState.ACTIVE or self.conn is None:
            self.fail(f"{type(msg).__name__} before the handshake completed")
            return
        if isinstance(msg, PiecePayload):
            self._payload_start(msg)
            return
        self.node.run(self.node.scheduler.message(self.conn, msg))

    def _payload_start(self, msg: PiecePayload) -> None:
        assert self.conn is not None
        verdict, actions = self.node.scheduler.payload_start(self.conn, msg.index, msg.length)
        self.node.run(actions)
        if verdict == PayloadVerdict.REJECT or self.state == ConnectionState.CLOSED:
            return
        self._raw_index = msg.index
        self._raw_left = msg.length
        self._raw_pos = 0
        if verdict == PayloadVerdict.RECEIVE:
            self._raw = self.node.buffers.take(msg.length)
            self._raw_view = memoryview(self._raw)
        else:
            self._raw = self._raw_view = None
        if not msg.length:
            self._payload_done()

    def _drop_raw(self) -> None:
        """Forget a partial payload; its buffer goes back to the pool."""
        data = self._raw
        self._raw = self._raw_view = None
        if data is not None:
            self.node.buffers.give(data)

    def _payload_done(self) -> None:
        assert self.conn is not None and self.infohash is not None
        data, index = self._raw, self._raw_index
        self._raw_view = None
        self._raw = None
        if data is None:
            return
        verdict, actions = self.node.scheduler.payload_end(self.conn, index)
        if verdict == PayloadVerdict.ACCEPT:
            self.node.write_piece(self.conn, self.infohash, index, data)
        else:
            self.node.buffers.give(data)
        self.node.run(actions)

    # -- sending ---------------------------------------------------------------

    def send_message(self, msg: Message) -> None:
        """Frame and write a control message."""
        if self.state != ConnectionState.CLOSED and self.transport is not None:
            self.write_frame(msg.encode())

    def send_piece(self, index: int) -> None:
        """Read the piece off the reactor thread, then stream it."""
        storage = self.node.storages.get(self.infohash) if self.infohash else None
        if storage is None:
            self.piece_failed_to_send(index, "torrent not open")
            return
        zero_copy = sendfile_transport(self.raw_transport()) is not None
        d = self.node.run_blocking(_prepare_send, storage, index, zero_copy)
        d.addCallbacks(
            lambda data: self._stream(index, data),
            lambda f: self.piece_failed_to_send(index, str(f.value)),
        )

    def _stream(self, index: int, data: PieceFile | bytes) -> None:
        if isinstance(data, PieceFile):
            self._stream_file(index, data)
            return
        if self.state == ConnectionState.CLOSED:
            return
        self._sender = _PieceSender(self, index, data)
        self._sender.start()

    def _stream_file(self, index: int, region: PieceFile) -> None:
        if self.state == ConnectionState.CLOSED or self.transport is None:
            region.close()
            return
        bandwidth = self.node.bandwidth
        self.write_frame_now(PiecePayload(index, region.length).encode())
        sender = SendfileProducer(
            self.raw_transport(),
            region.fd,
            region.offset,
            region.length,
            chunk=bandwidth.send_chunk(UNLIMITED_CHUNK),
            shaper=bandwidth.send_delay if bandwidth.egress is not None else None,
            clock=self.node.reactor,
        )
        self._sender = sender

        def sent(_: object) -> None:
            region.close()
            self.piece_sent(index, region.length)

        def failed(f: Failure) -> None:
            region.close()
            self._sender = None
            self._held.clear()
            # The header promised bytes that will not come: the stream is unusable.
            self.fail(f"sending piece {index} failed: {f.value}")

        sender.start().addCallbacks(sent, failed)

    def piece_sent(self, index: int, length: int) -> None:
        """The sender finished writing a piece: send the held frames, tell the engine."""
        self.node.metrics.sent.inc(length)
        self._sender = None
        held, self._held = self._held, []
        if held and self.state != ConnectionState.CLOSED and self.transport is not None:
            self._write(b"".join(held))
        if self.conn is not None and self.state == ConnectionState.ACTIVE:
            self.node.run(self.node.scheduler.piece_sent(self.conn, index))

    def piece_failed_to_send(self, index: int, reason: str) -> None:
        """Reading the piece failed."""
        if self.conn is not None and self.state == ConnectionState.ACTIVE:
            self.node.run(self.node.scheduler.send_failed(self.conn, index, reason))


class PeerNode:
    """Runs a Scheduler on a reactor: performs its actions, reports results back."""

    log = Logger()

    def __init__(
        self,
        reactor: IClientReactor,
        scheduler: Scheduler,
        archive: IArchive,
        run_blocking: BlockingRunner,
        *,
        connector: Connector | None = None,
        announcer: Announcer | None = None,
        unreachable: Unreachable | None = None,
        bandwidth: BandwidthLimiter | None = None,
        tls: Any | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        tick_interval: float = 1.0,
        metrics: PeerMetrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.scheduler = scheduler
        self.archive = archive
        self.run_blocking = run_blocking
        self.connector = connector or self._tcp_connector
        self.announcer = announcer
        self.unreachable = unreachable
        self.bandwidth = bandwidth or BandwidthLimiter()
        #: The TLS context our dials use (peer TLS, kraken.tls.ClusterTLS.peer_options),
        #: or None: plain TCP.  The listener is wrapped by whoever makes it.
        self.tls = tls
        self._read_buffer: memoryview | None = None
        self.handshake_timeout = handshake_timeout
        self.tick_interval = tick_interval
        self.protocols: dict[ConnId, PeerProtocol] = {}
        #: reused piece receive buffers.
        self.buffers = BufferPool()
        #: one writer at a time per torrent (hashing stays parallel).
        self._write_locks: dict[InfoHash, threading.Lock] = {}
        #: bytes received and not yet verified and written; reading stops above
        #: max_unwritten so slow writes cannot pile pieces up in memory.
        self.unwritten = 0
        self.max_unwritten = MAX_UNWRITTEN
        self.writes_behind = False
        #: every connected protocol, engaged or not (for a clean stop).
        self.live: set[PeerProtocol] = set()
        #: nesting depth of :meth:`run`, and the connections whose frames it holds
        #: until the outermost run ends (then each writes them in one call).
        self._running = 0
        self._corked: list[PeerProtocol] = []
        self.storages: dict[InfoHash, IPieceStorage] = {}
        #: downloads whose storage is being opened; every caller waits on the new torrent
        #: before its first actions run (they may finish or drop it at once).
        self._creating: SingleFlight[InfoHash, list[Action]] = SingleFlight(
            after=lambda h, actions: self.run(actions)
        )
        self._ticker: LoopingCall | None = None
        self.metrics = metrics or PeerMetrics()
        self.metrics.watch(self)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the engine's timer."""
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = self.reactor
        self._ticker.start(self.tick_interval, now=False)

    def stop(self) -> Deferred[Any]:
        """Stop the timer, close every connection, fail waiting downloads.

        Fires when every connection is gone.
        """
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self.run(self.scheduler.stop())
        live = list(self.live)
        for proto in live:
            proto.close("node stopping")
        return defer.gatherResults([p.lost for p in live])

    def tick(self) -> None:
        """One engine timer step; tells the engine which connections received payload bytes."""
        progressed = []
        for conn, proto in self.protocols.items():
            if proto.payload_bytes:
                proto.payload_bytes = False
                progressed.append(conn)
        self.run(self.scheduler.tick(progressed))

    def read_buffer(self) -> memoryview:
        """
        SOCKET_BUFFER bytes that every connection of this node reads frames into (reactor
        thread only: a read's bytes are parsed, and what is kept copied out, before the
        next read).
        """
        if self._read_buffer is None:
            self._read_buffer = memoryview(bytearray(SOCKET_BUFFER))
        return self._read_buffer

    def factory(self) -> PeerFactory:
        """A factory for a listening port."""
        return PeerFactory(self)

    # -- downloads ---------------------------------------------------------------

    def download(self, namespace: str, metainfo: MetaInfo) -> Deferred[IPieceStorage]:
        """Download a blob (or join the running download); fires with its storage when final."""
        h = metainfo.infohash
        result: Deferred[IPieceStorage] = Deferred()
        if self.scheduler.has_torrent(h):
            self._wait(h, result)
            return result

        def create() -> Deferred[list[Action]]:
            d = self.run_blocking(lambda: _open_storage(self.archive.create(namespace, metainfo)))
            return d.addCallback(created)

        def created(opened: _Opened) -> list[Action]:
            self.storages[h] = opened.storage
            return self.scheduler.add_torrent(
                metainfo, namespace, opened.have, complete=opened.complete
            )

        joined = self._creating.run(h, create, then=lambda _: self._wait(h, result))
        joined.addErrback(result.errback)
        return result

    def _wait(self, h: InfoHash, result: Deferred[IPieceStorage]) -> None:
        def done(error: BaseException | None) -> None:
            if error is None:
                result.callback(self.storages[h])
            else:
                result.errback(error)

        t = self.scheduler.torrents[h]
        self.run(
            self.scheduler.add_torrent(
                t.metainfo, t.namespace, t.dispatcher.have, complete=t.complete, waiter=done
            )
        )

    # -- incoming connections ----------------------------------------------------

    def incoming(self, proto: PeerProtocol, hs: Handshake) -> None:
        """An incoming handshake: open the blob if needed, then accept or close."""
        h = hs.infohash
        if self.scheduler.has_torrent(h):
            self._accept(proto, hs)
            return

        def opened(result: _Opened | None) -> None:
            if proto.state == ConnectionState.CLOSED:
                return
            if result is None or result.storage.metainfo.infohash != h:
                proto.close(f"unknown blob {hs.digest} / torrent {h}", abort=True)
                return
            if not self.scheduler.has_torrent(h):
                self.storages[h] = result.storage
                self.run(
                    self.scheduler.add_torrent(
                        result.storage.metainfo,
                        hs.namespace,
                        result.have,
                        complete=result.complete,
                    )
                )
            self._accept(proto, hs)

        def lookup() -> _Opened | None:
            storage = self.archive.open(hs.namespace, hs.digest)
            return None if storage is None else _open_storage(storage)

        d = self.run_blocking(lookup)
        d.addCallbacks(opened, lambda f: proto.close(f"lookup failed: {f.value}", abort=True))

    def _accept(self, proto: PeerProtocol, hs: Handshake) -> None:
        source = address_key(proto.raw_transport().getPeer()) if proto.transport else None
        try:
            conn, actions = self.scheduler.accept(hs, source)
        except HandshakeRejected as e:
            proto.close(str(e), abort=True)
            return
        proto.conn = conn
        proto.infohash = hs.infohash
        proto.state = ConnectionState.ACTIVE
        self.protocols[conn] = proto
        proto.send_message(self.scheduler.handshake_for(hs.infohash))
        self.run(actions)

    # -- actions -------------------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        """
        Perform the engine's actions in order.

        Control frames for one connection are held until the outermost ``run``
        ends and then written together: a received piece is announced to every
        neighbour and requests go out in bursts, and one write per connection
        is one system call and one TCP segment instead of several.
        """
        self._running += 1
        try:
            self._perform(actions)
        finally:
            self._running -= 1
            if not self._running and self._corked:
                corked, self._corked = self._corked, []
                for proto in corked:
                    proto.flush()

    def cork(self, proto: PeerProtocol) -> bool:
        """Whether ``proto`` should hold its frames (inside :meth:`run`); registers it."""
        if not self._running:
            return False
        if not proto._out:
            self._corked.append(proto)
        return True

    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                proto = self.protocols.get(a.conn)
                if proto is not None:
                    proto.send_message(a.message)
            elif isinstance(a, SendPiece):
                proto = self.protocols.get(a.conn)
                if proto is not None:
                    proto.send_piece(a.index)
            elif isinstance(a, Close):
                proto = self.protocols.pop(a.conn, None)
                if proto is not None:
                    proto.close(a.reason, abort=a.blacklisted)
            elif isinstance(a, Dial):
                self._dial(a)
            elif isinstance(a, Announce):
                self._announce(a)
            elif isinstance(a, Commit):
                self._commit(a.infohash)
            elif isinstance(a, TorrentDropped):
                self.storages.pop(a.infohash, None)
                self._write_locks.pop(a.infohash, None)

    def _dial(self, action: Dial) -> None:
        proto = PeerProtocol(self, action)
        self.protocols[action.conn] = proto

        def failed(f: Failure) -> None:
            if self.protocols.get(action.conn) is proto:
                del self.protocols[action.conn]
                self.unreachable_peer(action, str(f.value))
                self.run(self.scheduler.dial_failed(action.conn, str(f.value)))

        self.connector(action.peer, proto).addErrback(failed)

    def unreachable_peer(self, dial: Dial, reason: str) -> None:
        """Tell ``unreachable`` that ``dial`` failed to connect or to get a handshake back."""
        t = self.scheduler.torrents.get(dial.infohash)
        if self.unreachable is not None and t is not None:
            self.unreachable(t.metainfo.digest, dial.infohash, dial.peer, reason)

    def _tcp_connector(self, peer: PeerInfo, proto: PeerProtocol) -> Deferred[Any]:
        endpoint: Any = TCP4ClientEndpoint(
            self.reactor, peer.ip, peer.port, timeout=self.handshake_timeout
        )
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls, endpoint)
        d: Deferred[Any] = connectProtocol(endpoint, proto)  # type: ignore[no-untyped-call]
        return d

    def _announce(self, action: Announce) -> None:
        if self.announcer is None:
            self.run(self.scheduler.announce_failed(action.infohash))
            return
        d = self.announcer(action)
        d.addCallbacks(
            lambda r: self.run(self.scheduler.announce_result(action.infohash, r[0], r[1])),
            lambda f: self.run(self.scheduler.announce_failed(action.infohash)),
        )

    def _commit(self, h: InfoHash) -> None:
        storage = self.storages.get(h)
        if storage is None:
            self.run(self.scheduler.commit_failed(h, "storage not open"))
            return
        d = self.run_blocking(storage.commit)
        d.addCallbacks(
            lambda _: self.run(self.scheduler.commit_done(h)),
            lambda f: self.run(self.scheduler.commit_failed(h, str(f.value))),
        )

    def write_piece(self, conn: ConnId, h: InfoHash, index: int, data: bytearray) -> None:
        """Verify and write a received piece off the reactor thread, then report.

        ``data`` comes from (and goes back to) the buffer pool, so storages must
        not keep a reference to it after ``write_piece`` returns.
        """
        storage = self.storages.get(h)
        if storage is None:
            self.buffers.give(data)
            self.run(self.scheduler.piece_failed(conn, h, index, bad_data=False, reason="not open"))
            return

        size = len(data)
        self.unwritten += size
        if self.unwritten > self.max_unwritten and not self.writes_behind:
            self.writes_behind = True
            for proto in list(self.live):
                proto.pause_reading()

        def release(result: T) -> T:
            self.buffers.give(data)
            self.unwritten -= size
            if self.writes_behind and self.unwritten <= self.max_unwritten // 2:
                self.writes_behind = False
                for proto in list(self.live):
                    proto.resume_reading()
            return result

        def written(_: object) -> None:
            self.metrics.received.inc(size)
            self.run(self.scheduler.piece_written(conn, h, index))

        def failed(f: Failure) -> None:
            bad = isinstance(f.value, PieceHashMismatch)
            self.metrics.pieces_failed.labels("hash" if bad else "write").inc()
            if isinstance(f.value, OSError):
                # Our disk (full, failing): the peer is not at fault and every other
                # piece would fail alike, so the download ends now with the error.
                self.log.error(
                    "storing piece {index} of {h} failed: {error}", index=index, h=h, error=f.value
                )
                self.run(self.scheduler.storage_failed(h, index, f.value))
                return
            if not bad:
                self.log.failure("writing piece {index} of {h}", f, index=index, h=h)
            self.run(self.scheduler.piece_failed(conn, h, index, bad_data=bad, reason=str(f.value)))

        lock = self._write_locks.get(h)
        if lock is None:
            lock = self._write_locks[h] = threading.Lock()
        d = self.run_blocking(verify_and_write, storage, index, data, lock)
        d.addBoth(release)
        d.addCallbacks(written, failed)


class PeerFactory(Factory):
    """Builds acceptor protocols of a node for a listening port."""

    def __init__(self, node: PeerNode) -> None:
        self.node = node

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        """A new incoming connection."""
        proto = PeerProtocol(self.node)
        proto.factory = self
        return proto


def make_scheduler(
    peer_id: Any, reactor: IReactorTime, rng: random.Random | None = None, **config: Any
) -> Scheduler:
    """A Scheduler on the reactor's clock (convenience for services and tests)."""
    from kraken.torrent.actions import EngineConfig

    return Scheduler(peer_id, reactor.seconds, rng or random.Random(), EngineConfig(**config))


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "PeerFactory",
    "PeerNode",
    "PeerProtocol",
    "address_key",
    "make_scheduler",
]
