"""Tests for kraken.core.bitfield."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, InvalidBitfield
from kraken.core.bitfield import mask_indices


@st.composite
def bitfields(draw: st.DrawFn) -> tuple[int, set[int]]:
    """A length and a subset of its indices."""
    n = draw(st.integers(min_value=0, max_value=300))
    indices = draw(st.sets(st.integers(min_value=0, max_value=max(0, n - 1)))) if n else set()
    return n, indices


class BitfieldTests(SynchronousTestCase):
    """Bitfield behaviour and wire encoding."""

    @given(bitfields())
    def test_round_trip(self, case: tuple[int, set[int]]) -> None:
        """Encoding and decoding preserves exactly the set indices."""
        n, indices = case
        field = Bitfield.of(n, indices)
        decoded = Bitfield.from_bytes(field.to_bytes(), n)
        self.assertEqual(decoded, field)
        self.assertEqual(set(decoded), indices)
        self.assertEqual(decoded.count(), len(indices))
        self.assertEqual(set(decoded.missing()), set(range(n)) - indices)
        self.assertEqual(decoded.complete(), len(indices) == n)

    @given(bitfields())
    def test_mask(self, case: tuple[int, set[int]]) -> None:
        """mask() has bit i set exactly for piece i; mask_indices lists them ascending."""
        n, indices = case
        mask = Bitfield.of(n, indices).mask()
        self.assertEqual(mask, sum(1 << i for i in indices))
        self.assertEqual(list(mask_indices(mask)), sorted(indices))

    def test_msb_first(self) -> None:
        """Bit 0 is the most significant bit of the first byte."""
        self.assertEqual(Bitfield.of(9, [0, 8]).to_bytes(), b"\x80\x80")

    def test_spare_bits_rejected(self) -> None:
        """Bits set beyond the length are an error."""
        self.assertRaises(InvalidBitfield, Bitfield.from_bytes, b"\x01", 7)

    def test_wrong_size_rejected(self) -> None:
        """A byte count not matching the length is an error."""
        self.assertRaises(InvalidBitfield, Bitfield.from_bytes, b"\x00\x00", 8)
        self.assertRaises(InvalidBitfield, Bitfield.from_bytes, b"", 1)

    def test_bounds(self) -> None:
        """Out-of-range indices raise IndexError; `in` answers False."""
        field = Bitfield(4)
        self.assertRaises(IndexError, field.set, 4)
        self.assertRaises(IndexError, field.has, -1)
        self.assertNotIn(4, field)
        self.assertNotIn(-1, field)

    def test_set_clear_count(self) -> None:
        """set and clear report changes and keep the count."""
        field = Bitfield(10)
        self.assertTrue(field.set(3))
        self.assertFalse(field.set(3))
        self.assertEqual(field.count(), 1)
        self.assertTrue(field.clear(3))
        self.assertFalse(field.clear(3))
        self.assertEqual(field.count(), 0)

    @given(bitfields(), bitfields())
    def test_difference(self, a: tuple[int, set[int]], b: tuple[int, set[int]]) -> None:
        """difference lists what one side has and the other lacks."""
        n = min(a[0], b[0])
        mine = Bitfield.of(n, {i for i in a[1] if i < n})
        theirs = Bitfield.of(n, {i for i in b[1] if i < n})
        self.assertEqual(set(mine.difference(theirs)), set(mine) - set(theirs))
        self.assertEqual(mine.has_any_not_in(theirs), bool(set(mine) - set(theirs)))

    def test_full_and_copy(self) -> None:
        """full=True sets everything; copies are independent."""
        field = Bitfield(5, full=True)
        self.assertTrue(field.complete())
        other = field.copy()
        other.clear(0)
        self.assertTrue(field.complete())
        self.assertFalse(other.complete())
