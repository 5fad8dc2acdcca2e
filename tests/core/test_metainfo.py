"""Tests for kraken.core.metainfo."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import (
    DEFAULT_PIECE_LENGTHS,
    Digest,
    DigestMismatch,
    InvalidMetaInfo,
    MetaInfo,
    MetaInfoBuilder,
    PieceLengthTable,
)
from kraken.core.metainfo import GiB, MiB


class PieceLengthTests(SynchronousTestCase):
    """The piece length table of DESIGN 3."""

    def test_defaults(self) -> None:
        """
        < 256 MiB: 256 KiB, < 1 GiB: 512 KiB, < 16 GiB: 1 MiB, >= 16 GiB: 8 MiB (tuned by
        bench.swarm).
        """
        table = DEFAULT_PIECE_LENGTHS
        self.assertEqual(table.for_size(0), MiB // 4)
        self.assertEqual(table.for_size(256 * MiB - 1), MiB // 4)
        self.assertEqual(table.for_size(256 * MiB), MiB // 2)
        self.assertEqual(table.for_size(GiB - 1), MiB // 2)
        self.assertEqual(table.for_size(GiB), MiB)
        self.assertEqual(table.for_size(16 * GiB - 1), MiB)
        self.assertEqual(table.for_size(16 * GiB), 8 * MiB)
        self.assertEqual(table.for_size(100 * GiB), 8 * MiB)

    def test_below_every_threshold(self) -> None:
        """A size below every threshold uses the smallest entry."""
        self.assertEqual(PieceLengthTable([(100, 7), (10, 5)]).for_size(3), 5)

    def test_bad_tables(self) -> None:
        """Empty tables and non-positive lengths are rejected."""
        self.assertRaises(ValueError, PieceLengthTable, [])
        self.assertRaises(ValueError, PieceLengthTable, [(0, 0)])
        self.assertRaises(ValueError, PieceLengthTable, [(-1, 5)])


class MetaInfoTests(SynchronousTestCase):
    """Building, serialising and validating metainfo."""

    @settings(max_examples=50)
    @given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700), st.data())
    def test_chunking_invariant(self, blob: bytes, piece_length: int, data: st.DataObject) -> None:
        """Feeding in any chunking gives the same metainfo, with correct piece hashes."""
        whole = MetaInfo.of_bytes(blob, piece_length)
        builder = MetaInfoBuilder(piece_length)
        pos = 0
        while pos < len(blob):
            step = data.draw(st.integers(min_value=1, max_value=len(blob) - pos))
            builder.feed(blob[pos : pos + step])
            pos += step
        self.assertEqual(builder.finish(), whole)
        self.assertEqual(whole.digest, Digest.of_bytes(blob))
        self.assertEqual(whole.length, len(blob))
        for i in range(whole.num_pieces):
            piece = blob[whole.piece_offset(i) : whole.piece_offset(i) + whole.piece_size(i)]
            self.assertEqual(whole.piece_hashes[i], hashlib.sha256(piece).digest())
            self.assertTrue(whole.verify_piece(i, piece))
        self.assertEqual(MetaInfo.from_json(whole.to_json()), whole)

    def test_empty_blob_has_one_piece(self) -> None:
        """An empty blob has one empty piece."""
        m = MetaInfo.of_bytes(b"", 1024)
        self.assertEqual(m.num_pieces, 1)
        self.assertEqual(m.piece_size(0), 0)
        self.assertTrue(m.verify_piece(0, b""))

    def test_infohash_is_sha256_of_canonical_json(self) -> None:
        """The infohash is the sha256 of the sorted, compact JSON object."""
        m = MetaInfo.of_bytes(b"hello world", 4)
        canonical = json.dumps(
            {
                "name": m.digest.hex,
                "length": 11,
                "piece_length": 4,
                "piece_hashes": [h.hex() for h in m.piece_hashes],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        self.assertEqual(m.infohash.hex, hashlib.sha256(canonical).hexdigest())
        self.assertEqual(m.to_json(), canonical)

    def test_infohash_depends_on_piece_length(self) -> None:
        """The same blob cut differently is a different torrent."""
        self.assertNotEqual(
            MetaInfo.of_bytes(b"x" * 10, 2).infohash, MetaInfo.of_bytes(b"x" * 10, 5).infohash
        )

    def test_verify_piece_rejects_wrong_data(self) -> None:
        """A piece with a wrong byte or length does not verify."""
        m = MetaInfo.of_bytes(b"abcdefgh", 4)
        self.assertFalse(m.verify_piece(0, b"abcx"))
        self.assertFalse(m.verify_piece(0, b"abc"))
        self.assertRaises(IndexError, m.verify_piece, 2, b"")

    def test_expected_digest(self) -> None:
        """finish(expected) raises DigestMismatch on other content."""
        builder = MetaInfoBuilder(4)
        builder.feed(b"data")
        self.assertRaises(DigestMismatch, builder.finish, Digest.of_bytes(b"other"))

    def test_invalid_json(self) -> None:
        """Untrusted JSON with wrong types or inconsistent sizes is rejected with a reason."""
        good = MetaInfo.of_bytes(b"x" * 10, 4).to_dict()
        cases: list[tuple[object, str]] = [
            ([], "object"),
            ({**good, "length": -1}, "negative"),
            ({**good, "length": "10"}, "'length'"),
            ({**good, "length": True}, "'length'"),
            ({**good, "piece_length": 0}, "piece_length"),
            ({**good, "piece_length": 1 << 40}, "piece_length"),
            ({**good, "length": 100}, "piece hashes"),
            ({**good, "piece_hashes": good["piece_hashes"][:-1]}, "piece hashes"),
            ({**good, "piece_hashes": ["zz" * 32] * 3}, "not hex"),
            ({**good, "piece_hashes": ["AA" * 32] * 3}, "lowercase"),
            ({**good, "piece_hashes": [1, 2, 3]}, "piece hash 0"),
            ({**good, "piece_hashes": "abc"}, "list"),
            ({**good, "name": "sha256:" + good["name"]}, "'name'"),
            ({**good, "name": 5}, "'name'"),
            ({**good, "extra": 1}, "unknown"),
            ({k: v for k, v in good.items() if k != "length"}, "'length'"),
        ]
        for obj, reason in cases:
            with self.assertRaises(InvalidMetaInfo) as e:
                MetaInfo.from_json(json.dumps(obj))
            self.assertIn(reason, str(e.exception))
        self.assertRaises(InvalidMetaInfo, MetaInfo.from_json, b"{not json")
        self.assertRaises(InvalidMetaInfo, MetaInfo.from_json, b"\xff\xfe")

    def test_deeply_nested_json(self) -> None:
        """JSON nested past the parser's recursion limit is InvalidMetaInfo, not RecursionError."""
        with self.assertRaises(InvalidMetaInfo) as caught:
            MetaInfo.from_json(b"[" * 60_000)
        self.assertIn("nested too deeply", str(caught.exception))

    @given(st.binary(max_size=300))
    def test_fuzz_json(self, raw: bytes) -> None:
        """Arbitrary bytes either parse or raise InvalidMetaInfo, nothing else."""
        with contextlib.suppress(InvalidMetaInfo):
            MetaInfo.from_json(raw)

    def test_from_stream_short(self) -> None:
        """A stream shorter than announced is an error."""
        self.assertRaises(InvalidMetaInfo, MetaInfo.from_stream, io.BytesIO(b"abc"), 10)

    def test_from_path_streams_with_bounded_memory(self) -> None:
        """Building metainfo of a 64 MiB file allocates far less than the file size."""
        path = self.mktemp()
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(MiB))
        tracemalloc.start()
        try:
            m = MetaInfo.from_path(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 8 * MiB)
        self.assertEqual(m.length, 64 * MiB)
        self.assertEqual(m.piece_length, MiB // 4)
        self.assertEqual(m.num_pieces, 256)
        with open(path, "rb") as f:
            self.assertEqual(m.digest, Digest(hashlib.sha256(f.read()).hexdigest()))
