"""
A fixed-length set of piece indices.

Wire encoding (docs/protocol.md): ``ceil(n / 8)`` bytes, bit ``i`` is bit
``7 - i % 8`` of byte ``i // 8`` (most significant bit first, as in
BitTorrent); spare bits at the end must be zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))
#: each byte with its bits in reverse order (wire order, MSB first -> bit i = piece i).
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
#: the set bit positions of each byte value, least significant first.
_BIT_POSITIONS = tuple(tuple(k for k in range(8) if b >> k & 1) for b in range(256))


def mask_indices(mask: int) -> Iterator[int]:
    """
    The set bits of ``mask`` (bit ``i`` = piece ``i``, as :meth:`Bitfield.mask`), ascending.

    Piece sets as integers let the dispatcher intersect a peer's pieces with what is
    missing and not yet asked for at C speed, and visit only what is left, instead of
    testing every missing piece in Python on each request.
    """
    if mask <= 0:
        return
    data = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
    for byte_index, byte in enumerate(data):
        if byte:
            base = byte_index << 3
            for bit in _BIT_POSITIONS[byte]:
                yield base + bit


class InvalidBitfield(ValueError):
    """Bytes that do not encode a bitfield of the expected length."""


class Bitfield:
    """A mutable bit set of ``length`` pieces."""

    __slots__ = ("_bits", "_count", "length")

    def __init__(self, length: int, *, full: bool = False) -> None:
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise InvalidBitfield(f"invalid bitfield length {length!r}")
        self.length = length
        self._bits = bytearray((length + 7) // 8)
        self._count = 0
        if full:
            for i in range(length):
                self.set(i)

    @classmethod
    def from_bytes(cls, data: bytes, length: int) -> Bitfield:
        """Decode the wire form, rejecting a wrong size or non-zero spare bits."""
        expected = (length + 7) // 8
        if len(data) != expected:
            raise InvalidBitfield(
                f"bitfield of {length} pieces needs {expected} bytes, got {len(data)}"
            )
        spare = expected * 8 - length
        if spare and data[-1] & ((1 << spare) - 1):
            raise InvalidBitfield("bitfield has bits set beyond its length")
        field = cls(length)
        field._bits[:] = data
        field._count = sum(_POPCOUNT[b] for b in data)
        return field

    @classmethod
    def of(cls, length: int, indices: Iterable[int]) -> Bitfield:
        """A bitfield with exactly ``indices`` set."""
        field = cls(length)
        for i in indices:
            field.set(i)
        return field

    def _check(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"piece index {index} out of range 0..{self.length - 1}")

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self.length:
            return False
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def has(self, index: int) -> bool:
        """Whether piece ``index`` is set (raises IndexError when out of range)."""
        self._check(index)
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def set(self, index: int) -> bool:
        """Set bit ``index``; return whether it changed."""
        self._check(index)
        mask = 0x80 >> (index & 7)
        if self._bits[index >> 3] & mask:
            return False
        self._bits[index >> 3] |= mask
        self._count += 1
        return True

    def clear(self, index: int) -> bool:
        """Clear bit ``index``; return whether it changed."""
        self._check(index)
        mask = 0x80 >> (index & 7)
        if not self._bits[index >> 3] & mask:
            return False
        self._bits[index >> 3] &= ~mask & 0xFF
        self._count -= 1
        return True

    def count(self) -> int:
        """Number of set bits."""
        return self._count

    def complete(self) -> bool:
        """Whether every bit is set."""
        return self._count == self.length

    def __iter__(self) -> Iterator[int]:
        """Set indices in ascending order."""
        bits = self._bits
        for byte_index, byte in enumerate(bits):
            if not byte:
                continue
            base = byte_index * 8
            for bit in range(8):
                if byte & (0x80 >> bit):
                    yield base + bit

    def missing(self) -> Iterator[int]:
        """Unset indices in ascending order."""
        for i in range(self.length):
            if not self._bits[i >> 3] & (0x80 >> (i & 7)):
                yield i

    def difference(self, other: Bitfield) -> Iterator[int]:
        """Indices set here and not in ``other`` (what we could give to a peer with ``other``)."""
        if other.length != self.length:
            raise InvalidBitfield("bitfields of different lengths")
        for byte_index, (mine, theirs) in enumerate(zip(self._bits, other._bits, strict=True)):
            wanted = mine & ~theirs
            if wanted:
                base = byte_index * 8
                for bit in range(8):
                    if wanted & (0x80 >> bit):
                        yield base + bit

    def has_any_not_in(self, other: Bitfield) -> bool:
        """Whether this has some piece ``other`` lacks."""
        return next(self.difference(other), None) is not None

    def mask(self) -> int:
        """The set as an integer, bit ``i`` set when piece ``i`` is (see :func:`mask_indices`)."""
        return int.from_bytes(self._bits.translate(_REVERSED), "little")

    def to_bytes(self) -> bytes:
        """The wire encoding."""
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        """An independent copy."""
        return Bitfield.from_bytes(bytes(self._bits), self.length)

    def __len__(self) -> int:
        return self.length

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self.length == other.length and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"<Bitfield {self._count}/{self.length}>"
