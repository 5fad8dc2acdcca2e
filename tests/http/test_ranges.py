"""The one ``Range`` reading (kraken.http.ranges) that origin, agent and proxy share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.http.errors import RANGE_INVALID
from kraken.http.ranges import ByteRange, InvalidRange, parse_range


class ParseRangeTests(SynchronousTestCase):
    """What :func:`parse_range` answers for each kind of header."""

    def test_single_ranges(self) -> None:
        """Closed, open, suffix and clamped ranges give the bytes RFC 9110 says."""
        self.assertIsNone(parse_range(None, 10))
        self.assertEqual(parse_range("bytes=0-4", 10), ByteRange(0, 4, 10))
        self.assertEqual(parse_range(b"bytes=0-4", 10), ByteRange(0, 4, 10))
        self.assertEqual(parse_range("bytes=5-", 10), ByteRange(5, 9, 10))
        self.assertEqual(parse_range("bytes=-3", 10), ByteRange(7, 9, 10))
        self.assertEqual(parse_range("bytes=-30", 10), ByteRange(0, 9, 10))
        self.assertEqual(parse_range("bytes=8-100", 10), ByteRange(8, 9, 10))
        self.assertEqual(parse_range("Bytes = 9-9", 10), ByteRange(9, 9, 10))
        self.assertEqual(parse_range("bytes=0-" + "9" * 40, 10), ByteRange(0, 9, 10))

    def test_ignored(self) -> None:
        """Another unit, or several ranges, mean the whole blob (None)."""
        self.assertIsNone(parse_range("items=0-1", 10))
        self.assertIsNone(parse_range("bytes=0-1,5-6", 10))
        self.assertIsNone(parse_range("bytes=5-6,0-1", 10))

    def test_invalid(self) -> None:
        """Malformed single ranges and ranges past the end are InvalidRange (416)."""
        for bad in (
            "bytes=10-",
            "bytes=5-4",
            "bytes=-0",
            "bytes=-",
            "bytes=abc",
            "bytes",
            "bytes=1-2-3",
            "bytes=" + "9" * 5000 + "-",
            "bytes=" + "9" * 40 + "-",
        ):
            with self.assertRaises(InvalidRange, msg=bad[:20]) as caught:
                parse_range(bad, 10)
            error = caught.exception
            self.assertEqual((error.status, error.registry_code), (416, RANGE_INVALID))
            self.assertEqual(error.headers, {"Content-Range": "bytes */10"})
            self.assertLess(len(error.message), 200)

    def test_empty_blob(self) -> None:
        """Every byte range of an empty blob is unsatisfiable; no Range serves it."""
        self.assertIsNone(parse_range(None, 0))
        for header in ("bytes=0-", "bytes=-1", "bytes=0-0"):
            self.assertRaises(InvalidRange, parse_range, header, 0)

    def test_content_range(self) -> None:
        """The Content-Range of a range names it and the blob's size."""
        self.assertEqual(ByteRange(2, 5, 10).content_range(), "bytes 2-5/10")
        self.assertEqual((ByteRange(2, 5, 10).length, ByteRange(2, 5, 10).stop), (4, 6))

    @given(
        size=st.integers(0, 10**12),
        start=st.integers(0, 10**13),
        end=st.none() | st.integers(0, 10**13),
    )
    def test_within_the_blob(self, size: int, start: int, end: int | None) -> None:
        """A range that parses lies inside the blob, starts where asked and is not empty."""
        header = f"bytes={start}-{'' if end is None else end}"
        try:
            r = parse_range(header, size)
        except InvalidRange:
            self.assertTrue(start >= size or (end is not None and end < start))
            return
        assert r is not None
        self.assertEqual(r.start, start)
        self.assertTrue(0 <= r.start <= r.end < size)
        self.assertEqual(r.end, size - 1 if end is None else min(end, size - 1))
