"""
Peer wire messages and their byte encoding (specified in docs/protocol.md).

Pure values and codecs, no I/O: the Twisted protocol frames them with a
4-byte big-endian length (``Int32StringReceiver``), the simulator passes the
values directly.  Every integer is big-endian.  A frame body is one type
byte followed by the message's fields::

    HANDSHAKE       0  magic "KRKN" | version u8 | flags u8 | peer_id 20 | infohash 32
                       | digest 32 | piece_count u32 | ns_len u16 | namespace
                       | bitfield ceil(piece_count / 8)
    PIECE_REQUEST   1  index u32
    PIECE_PAYLOAD   2  index u32 | length u32      (then ``length`` raw bytes, unframed)
    ANNOUNCE_PIECE  3  index u32
    CANCEL_PIECE    4  index u32
    ERROR           5  index u32 | code u8 | text_len u16 | text (UTF-8)
    COMPLETE        6  (empty)
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from attrs import frozen

from kraken.core import Bitfield, Digest, InfoHash, InvalidBitfield, PeerID

MAGIC: Final = b"KRKN"
VERSION: Final = 1

#: Largest frame body accepted.  A handshake needs 96 bytes + the namespace
#: (<= 1024) + ceil(n / 8) bytes of bitfield, so 1 MiB carries a bitfield of
#: up to (1 MiB - 1120) * 8 = 8,379,648 pieces: 8 TiB at 1 MiB pieces; a
#: 100 GB blob at 1 MiB pieces needs only 95,368 pieces = 11,921 bytes.
MAX_FRAME: Final = 1024 * 1024
MAX_NAMESPACE: Final = 1024
MAX_ERROR_TEXT: Final = 1024
_HS_FIXED: Final = struct.Struct(">4sBB20s32s32sIH")
#: Frame body bytes of a handshake besides namespace and bitfield (type byte included).
HANDSHAKE_OVERHEAD: Final = 1 + _HS_FIXED.size
#: Most pieces a torrent may have: its handshake must fit in MAX_FRAME.
MAX_PIECES: Final = (MAX_FRAME - HANDSHAKE_OVERHEAD - MAX_NAMESPACE) * 8

_INDEX = struct.Struct(">BI")
_PAYLOAD = struct.Struct(">BII")
_ERROR = struct.Struct(">BIBH")

FLAG_ORIGIN: Final = 0x01
FLAG_COMPLETE: Final = 0x02


class MessageType(enum.IntEnum):
    """The type byte that starts every frame body."""

    HANDSHAKE = 0
    PIECE_REQUEST = 1
    PIECE_PAYLOAD = 2
    ANNOUNCE_PIECE = 3
    CANCEL_PIECE = 4
    ERROR = 5
    COMPLETE = 6


class ErrorCode(enum.IntEnum):
    """Why a peer answered a request with ERROR instead of the piece."""

    PIECE_UNAVAILABLE = 0
    READ_FAILED = 1
    PROTOCOL = 2
    #: An origin sent this piece to another agent moments ago: ask the agents for it.
    SENT_ELSEWHERE = 3
    #: The sender gave this connection's slot to another peer (this one had sent nothing
    #: useful yet) and closes it: not a fault, the receiver may dial again (index 0).
    SLOT_RECLAIMED = 4


class MalformedMessage(ValueError):
    """A frame that does not decode to a valid message; the peer is misbehaving."""


@frozen
class Handshake:
    """First message each way: who I am, which blob, what I have."""

    peer_id: PeerID
    infohash: InfoHash
    digest: Digest
    namespace: str
    bitfield: Bitfield
    origin: bool = False

    def encode(self) -> bytes:
        """Frame body bytes."""
        ns = self.namespace.encode("utf-8")
        if len(ns) > MAX_NAMESPACE:
            raise ValueError(f"namespace of {len(ns)} bytes is longer than {MAX_NAMESPACE}")
        if self.bitfield.length > MAX_PIECES:
            raise ValueError(f"{self.bitfield.length} pieces do not fit a handshake")
        flags = (FLAG_ORIGIN if self.origin else 0) | (
            FLAG_COMPLETE if self.bitfield.complete() else 0
        )
        return b"".join(
            (
                bytes((MessageType.HANDSHAKE,)),
                _HS_FIXED.pack(
                    MAGIC,
                    VERSION,
                    flags,
                    self.peer_id.to_bytes(),
                    self.infohash.to_bytes(),
                    bytes.fromhex(self.digest.hex),
                    self.bitfield.length,
                    len(ns),
                ),
                ns,
                self.bitfield.to_bytes(),
            )
        )


@frozen
class PieceRequest:
    """Please send piece ``index``."""

    index: int

    def encode(self) -> bytes:
        """Frame body bytes."""
        return _INDEX.pack(MessageType.PIECE_REQUEST, self.index)


@frozen
class PiecePayload:
    """Header of a piece; exactly ``length`` raw bytes follow outside the frame."""

    index: int
    length: int

    def encode(self) -> bytes:
        """Frame body bytes (the payload bytes are written separately)."""
        return _PAYLOAD.pack(MessageType.PIECE_PAYLOAD, self.index, self.length)


@frozen
class AnnouncePiece:
    """I now have piece ``index``."""

    index: int

    def encode(self) -> bytes:
        """Frame body bytes."""
        return _INDEX.pack(MessageType.ANNOUNCE_PIECE, self.index)


@frozen
class CancelPiece:
    """Forget my request for piece ``index`` (I got it elsewhere)."""

    index: int

    def encode(self) -> bytes:
        """Frame body bytes."""
        return _INDEX.pack(MessageType.CANCEL_PIECE, self.index)


@frozen
class Error:
    """A request for piece ``index`` cannot be served."""

    index: int
    code: ErrorCode
    text: str

    def encode(self) -> bytes:
        """Frame body bytes (text truncated to MAX_ERROR_TEXT bytes)."""
        raw = self.text.encode("utf-8")[:MAX_ERROR_TEXT]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")
        return _ERROR.pack(MessageType.ERROR, self.index, self.code, len(raw)) + raw


@frozen
class Complete:
    """I have every piece."""

    def encode(self) -> bytes:
        """Frame body bytes."""
        return bytes((MessageType.COMPLETE,))


Message = Handshake | PieceRequest | PiecePayload | AnnouncePiece | CancelPiece | Error | Complete


def _decode_handshake(body: bytes) -> Handshake:
    if len(body) < HANDSHAKE_OVERHEAD:
        raise MalformedMessage(f"handshake of {len(body)} bytes is too short")
    magic, version, flags, peer_id, infohash, digest, count, ns_len = _HS_FIXED.unpack_from(body, 1)
    if magic != MAGIC:
        raise MalformedMessage(f"handshake magic {magic!r} is not {MAGIC!r}")
    if version != VERSION:
        raise MalformedMessage(f"handshake version {version} is not {VERSION}")
    if flags & ~(FLAG_ORIGIN | FLAG_COMPLETE):
        raise MalformedMessage(f"handshake flags {flags:#x} has unknown bits")
    if ns_len > MAX_NAMESPACE:
        raise MalformedMessage(f"namespace of {ns_len} bytes is longer than {MAX_NAMESPACE}")
    if count == 0 or count > MAX_PIECES:
        raise MalformedMessage(f"piece count {count} is not in 1..{MAX_PIECES}")
    ns_end = HANDSHAKE_OVERHEAD + ns_len
    expected = ns_end + (count + 7) // 8
    if len(body) != expected:
        raise MalformedMessage(f"handshake of {len(body)} bytes, expected {expected}")
    try:
        namespace = body[HANDSHAKE_OVERHEAD:ns_end].decode("utf-8")
        bitfield = Bitfield.from_bytes(body[ns_end:], count)
    except (UnicodeDecodeError, InvalidBitfield) as e:
        raise MalformedMessage(f"bad handshake: {e}") from None
    if bool(flags & FLAG_COMPLETE) != bitfield.complete():
        raise MalformedMessage("handshake complete flag disagrees with its bitfield")
    return Handshake(
        PeerID.from_bytes(peer_id),
        InfoHash.from_bytes(infohash),
        Digest(digest.hex()),
        namespace,
        bitfield,
        origin=bool(flags & FLAG_ORIGIN),
    )


def decode(body: bytes) -> Message:
    """Decode one frame body; raises MalformedMessage on anything unexpected."""
    if not body:
        raise MalformedMessage("empty frame")
    kind = body[0]
    n = len(body)
    if kind == MessageType.HANDSHAKE:
        return _decode_handshake(body)
    if kind in (MessageType.PIECE_REQUEST, MessageType.ANNOUNCE_PIECE, MessageType.CANCEL_PIECE):
        if n != _INDEX.size:
            raise MalformedMessage(f"message type {kind} of {n} bytes, expected {_INDEX.size}")
        _, index = _INDEX.unpack(body)
        if kind == MessageType.PIECE_REQUEST:
            return PieceRequest(index)
        if kind == MessageType.ANNOUNCE_PIECE:
            return AnnouncePiece(index)
        return CancelPiece(index)
    if kind == MessageType.PIECE_PAYLOAD:
        if n != _PAYLOAD.size:
            raise MalformedMessage(f"payload header of {n} bytes, expected {_PAYLOAD.size}")
        _, index, length = _PAYLOAD.unpack(body)
        return PiecePayload(index, length)
    if kind == MessageType.ERROR:
        if n < _ERROR.size:
            raise MalformedMessage(f"error message of {n} bytes is too short")
        _, index, code, text_len = _ERROR.unpack_from(body)
        if n != _ERROR.size + text_len or text_len > MAX_ERROR_TEXT:
            raise MalformedMessage(f"error message of {n} bytes with text of {text_len}")
        try:
            error_code = ErrorCode(code)
            text = body[_ERROR.size :].decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedMessage(f"bad error message: {e}") from None
        return Error(index, error_code, text)
    if kind == MessageType.COMPLETE:
        if n != 1:
            raise MalformedMessage(f"complete message of {n} bytes, expected 1")
        return Complete()
    raise MalformedMessage(f"unknown message type {kind}")
