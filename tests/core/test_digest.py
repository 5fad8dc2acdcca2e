"""Tests for kraken.core.digest."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Digest, InfoHash, InvalidDigest

HEX = "0123456789abcdef"
hex64 = st.text(alphabet=HEX, min_size=64, max_size=64)


class DigestTests(SynchronousTestCase):
    """Digest parsing and formatting."""

    @given(hex64)
    def test_round_trip(self, hex_part: str) -> None:
        """Formatting then parsing a digest gives the same digest."""
        d = Digest.parse(f"sha256:{hex_part}")
        self.assertEqual(d.hex, hex_part)
        self.assertEqual(Digest.parse(str(d)), d)
        self.assertEqual(str(d), f"sha256:{hex_part}")

    def test_of_bytes(self) -> None:
        """of_bytes is the sha256 of the content."""
        self.assertEqual(Digest.of_bytes(b"abc").hex, hashlib.sha256(b"abc").hexdigest())

    def test_rejections(self) -> None:
        """Malformed digests raise InvalidDigest naming the value."""
        good = "a" * 64
        for bad in [
            good,  # bare hex is not canonical
            f"sha512:{good}",
            f"sha256:{good.upper()}",
            f"sha256:{good[:-1]}",
            f"sha256:{good}0",
            f"sha256:{good[:-1]}g",
            "sha256:",
            "",
            f" sha256:{good}",
            f"sha256:{good}\n",
        ]:
            with self.assertRaises(InvalidDigest) as e:
                Digest.parse(bad)
            self.assertIn(repr(bad), str(e.exception))

    def test_not_a_string(self) -> None:
        """Non-string input is an InvalidDigest, not a TypeError."""
        self.assertRaises(InvalidDigest, Digest.parse, 42)  # type: ignore[arg-type]
        self.assertRaises(InvalidDigest, Digest, None)  # type: ignore[arg-type]

    @given(hex64)
    def test_lenient(self, hex_part: str) -> None:
        """parse_lenient accepts bare hex and the prefixed form alike."""
        self.assertEqual(Digest.parse_lenient(hex_part), Digest.parse_lenient(f"sha256:{hex_part}"))

    def test_lenient_rejects(self) -> None:
        """parse_lenient still rejects bad hex and other algorithms."""
        for bad in ["abc", "md5:" + "a" * 32, "../" + "a" * 61]:
            self.assertRaises(InvalidDigest, Digest.parse_lenient, bad)

    @given(st.text(max_size=80))
    def test_fuzz(self, text: str) -> None:
        """Arbitrary text either parses to a canonical digest or raises InvalidDigest."""
        try:
            d = Digest.parse(text)
        except InvalidDigest:
            return
        self.assertEqual(str(d), text)

    def test_shard_id(self) -> None:
        """The shard id is the first four hex characters."""
        self.assertEqual(Digest("abcd" + "0" * 60).shard_id, "abcd")


class InfoHashTests(SynchronousTestCase):
    """InfoHash conversions."""

    @given(st.binary(min_size=32, max_size=32))
    def test_bytes_round_trip(self, raw: bytes) -> None:
        """The 32 raw bytes round-trip through the hex form."""
        self.assertEqual(InfoHash.from_bytes(raw).to_bytes(), raw)

    def test_wrong_length(self) -> None:
        """Wrong sizes are rejected."""
        self.assertRaises(InvalidDigest, InfoHash.from_bytes, b"x" * 31)
        self.assertRaises(InvalidDigest, InfoHash, "a" * 40)
