"""Wire message codec: round trips and rejection of malformed frames."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, Digest, InfoHash, PeerID
from kraken.torrent import messages as m

u32 = st.integers(0, 2**32 - 1)


@st.composite
def handshakes(draw: st.DrawFn) -> m.Handshake:
    n = draw(st.integers(1, 300))
    bits = draw(st.sets(st.integers(0, n - 1)))
    return m.Handshake(
        PeerID(draw(st.binary(min_size=20, max_size=20)).hex()),
        InfoHash(draw(st.binary(min_size=32, max_size=32)).hex()),
        Digest(draw(st.binary(min_size=32, max_size=32)).hex()),
        draw(st.text(max_size=50)),
        Bitfield.of(n, bits),
        origin=draw(st.booleans()),
    )


messages = st.one_of(
    handshakes(),
    st.builds(m.PieceRequest, u32),
    st.builds(m.PiecePayload, u32, u32),
    st.builds(m.AnnouncePiece, u32),
    st.builds(m.CancelPiece, u32),
    st.builds(m.Error, u32, st.sampled_from(m.ErrorCode), st.text(max_size=100)),
    st.just(m.Complete()),
)


class CodecTests(SynchronousTestCase):
    """encode/decode of every message."""

    @given(messages)
    def test_round_trip(self, msg: m.Message) -> None:
        """Every message decodes to itself."""
        self.assertEqual(m.decode(msg.encode()), msg)

    @given(st.binary(max_size=200))
    def test_garbage_never_crashes(self, body: bytes) -> None:
        """Arbitrary bytes decode or raise MalformedMessage, nothing else."""
        with contextlib.suppress(m.MalformedMessage):
            m.decode(body)

    @given(messages, st.integers(1, 5))
    def test_truncated_rejected(self, msg: m.Message, cut: int) -> None:
        """A frame missing trailing bytes is malformed (COMPLETE has none to miss)."""
        body = msg.encode()
        if len(body) <= cut:
            return
        self.assertRaises(m.MalformedMessage, m.decode, body[:-cut])

    def test_unknown_type(self) -> None:
        """An unknown type byte is rejected."""
        self.assertRaises(m.MalformedMessage, m.decode, b"\x07\x00")

    def test_handshake_bytes(self) -> None:
        """The handshake layout is the one docs/protocol.md specifies."""
        hs = m.Handshake(
            PeerID("11" * 20), InfoHash("22" * 32), Digest("33" * 32), "ns", Bitfield.of(9, [0, 8])
        )
        body = hs.encode()
        self.assertEqual(body[:7], b"\x00KRKN\x01\x00")
        self.assertEqual(body[7:27], b"\x11" * 20)
        self.assertEqual(body[91:97], b"\x00\x00\x00\x09\x00\x02")
        self.assertEqual(body[97:], b"ns\x80\x80")
        self.assertEqual(m.PiecePayload(1, 2).encode(), b"\x02\x00\x00\x00\x01\x00\x00\x00\x02")

    def test_bad_magic_version_and_flag(self) -> None:
        """Wrong magic, version or a complete flag contradicting the bitfield are rejected."""
        hs = m.Handshake(
            PeerID("11" * 20), InfoHash("22" * 32), Digest("33" * 32), "", Bitfield(3)
        ).encode()
        for bad in (
            hs[:1] + b"XRKN" + hs[5:],
            hs[:5] + b"\x02" + hs[6:],
            hs[:6] + b"\x02" + hs[7:],
        ):
            self.assertRaises(m.MalformedMessage, m.decode, bad)

    def test_max_pieces_fits_frame(self) -> None:
        """A handshake with MAX_PIECES pieces and the longest namespace fits MAX_FRAME."""
        size = m.HANDSHAKE_OVERHEAD + m.MAX_NAMESPACE + (m.MAX_PIECES + 7) // 8
        self.assertLessEqual(size, m.MAX_FRAME)
        # 100 GB at 1 MiB pieces is far below the limit.
        self.assertLess(-(-100 * 10**9 // 2**20), m.MAX_PIECES)
