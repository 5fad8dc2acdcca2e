"""
kraken.peers.swarm and the announce's ``progress``: what the tracker's swarm page is fed.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, Digest, InfoHash, PeerID, PeerInfo
from kraken.peers.announce import AnnounceProgress, AnnounceRequest, InvalidAnnounce
from kraken.peers.swarm import MAX_PEERS, MAX_TORRENTS, PEER_TIMEOUT, SwarmView

DIGEST = Digest.of_bytes(b"layer")
IH = InfoHash(DIGEST.hex)
PIECES = 10
LENGTH = PIECES * 1000


def peer(n: int, complete: bool = False, *, origin: bool = False) -> PeerInfo:
    """Agent ``n`` on 10.0.0.n:16001."""
    return PeerInfo(
        PeerID.from_address(f"10.0.0.{n}", 16001),
        f"10.0.0.{n}",
        16001,
        origin=origin,
        complete=complete,
    )


def progress(*held: int, pieces: int = PIECES) -> AnnounceProgress:
    """The progress of an agent holding pieces ``held``."""
    return AnnounceProgress(pieces, pieces * 1000, Bitfield.of(pieces, held).to_bytes())


def announce(n: int, *held: int, complete: bool = False, ih: InfoHash = IH) -> AnnounceRequest:
    """Agent ``n``'s announce: holding ``held`` (downloading) or complete."""
    return AnnounceRequest(DIGEST, ih, peer(n, complete), None if complete else progress(*held))


class ProgressCodecTests(SynchronousTestCase):
    """The optional ``progress`` of an announce: encoded, decoded and checked."""

    @given(st.integers(1, 300), st.data())
    def test_round_trip(self, pieces: int, data: st.DataObject) -> None:
        """Any bitfield survives to_dict/from_dict; count is its number of pieces held."""
        held = data.draw(st.sets(st.integers(0, pieces - 1)))
        req = AnnounceRequest(DIGEST, IH, peer(1), progress(*held, pieces=pieces))
        again = AnnounceRequest.from_dict(req.to_dict(), IH)
        self.assertEqual(again, req)
        assert again.progress is not None
        self.assertEqual(again.progress.count, len(held))

    def test_absent(self) -> None:
        """Without ``progress`` the body is as before (complete agents, older agents)."""
        body = AnnounceRequest(DIGEST, IH, peer(1, True)).to_dict()
        self.assertNotIn("progress", body)
        self.assertIsNone(AnnounceRequest.from_dict(body, IH).progress)

    def test_invalid(self) -> None:
        """Each malformed progress is refused, naming the field."""
        good = announce(1, 0).to_dict()["progress"]
        cases = [
            ("not an object", "progress: expected a JSON object"),
            ({**good, "pieces": 0}, "progress.pieces: 0 not in"),
            ({**good, "pieces": True}, "progress.pieces: expected an integer"),
            ({**good, "length": -1}, "progress.length"),
            ({**good, "have": "%%%"}, "progress.have: not base64"),
            ({**good, "have": base64.b64encode(b"\x00").decode()}, "1 bytes for 10 pieces"),
            ({**good, "have": base64.b64encode(b"\x00\x01").decode()}, "past the last piece"),
            ({**good, "have": "A" * 10_000}, "expected the base64 of 2 bytes"),
        ]
        for value, message in cases:
            body = {**announce(1, 0).to_dict(), "progress": value}
            error = self.assertRaises(InvalidAnnounce, AnnounceRequest.from_dict, body, IH)
            self.assertIn(message, str(error), value)


class SwarmViewTests(SynchronousTestCase):
    """The swarm as announces paint it."""

    def test_snapshot(self) -> None:
        """Peers with completion and rate, origins, per-piece holder counts and the rate."""
        view = SwarmView()
        view.record(announce(1, 0, 1), now=10.0)
        view.record(announce(2), now=10.0)
        view.record(announce(3, complete=True), now=10.0)
        view.record(announce(1, 0, 1, 2, 3), now=12.0)  # 2 pieces of 1000 bytes in 2 s
        origin = peer(9, True, origin=True)
        snap = view.snapshot(IH, [origin], now=13.0)
        assert snap is not None
        self.assertEqual((snap["pieces"], snap["length"]), (PIECES, LENGTH))
        self.assertEqual((snap["agents"], snap["complete"]), (3, 1))
        rows = {p["address"]: p for p in snap["peers"]}
        self.assertEqual(rows["10.0.0.9:16001"]["origin"], True)
        self.assertEqual(rows["10.0.0.1:16001"]["done"], 4)
        self.assertEqual(rows["10.0.0.1:16001"]["rate"], 1000)
        self.assertEqual(rows["10.0.0.2:16001"]["done"], 0)
        self.assertEqual(rows["10.0.0.3:16001"]["done"], PIECES)
        # Pieces 0-3: agent 1, the complete agent 3 and the origin; the rest: 2 holders.
        self.assertEqual(snap["heat"], [3.0] * 4 + [2.0] * 6)
        self.assertEqual(snap["heat_max"], 4)
        self.assertEqual(snap["rate"], 1000)
        self.assertEqual(snap["history"][-1], [0.0, 1000])
        self.assertIsNone(view.snapshot(InfoHash(Digest.of_bytes(b"x").hex), [], now=13.0))

    def test_rate_over_a_window(self) -> None:
        """Announces close together give no rate; the rate spans at least RATE_WINDOW."""
        view = SwarmView()

        def rate(now: float) -> int:
            snap = view.snapshot(IH, [], now=now)
            assert snap is not None
            return int(snap["peers"][0]["rate"])

        view.record(announce(1), now=0.0)
        view.record(announce(1, 0, 1, 2), now=0.1)  # 3 pieces in 0.1 s: no rate yet
        self.assertEqual(rate(0.1), 0)
        view.record(announce(1, 0, 1, 2, 3), now=2.0)  # 4 pieces of 1000 bytes in 2 s
        self.assertEqual(rate(2.0), 2000)

    def test_viewers_share_a_snapshot_for_a_second(self) -> None:
        """Views within a second get the same snapshot; a later one sees new announces."""
        view = SwarmView()
        view.record(announce(1, 0), now=0.0)
        first = view.snapshot(IH, [], now=0.0)
        view.record(announce(2, 0), now=0.5)
        self.assertIs(view.snapshot(IH, [], now=0.5), first)
        later = view.snapshot(IH, [], now=1.0)
        assert later is not None
        self.assertEqual(later["agents"], 2)

    def test_complete_stops_the_rate(self) -> None:
        """An agent's complete announce sets it full and its rate to zero."""
        view = SwarmView()
        view.record(announce(1, 0), now=0.0)
        view.record(announce(1, 0, 1, 2), now=1.0)
        view.record(announce(1, complete=True), now=2.0)
        snap = view.snapshot(IH, [], now=2.0)
        assert snap is not None
        (row,) = snap["peers"]
        self.assertEqual((row["complete"], row["done"], row["rate"]), (True, PIECES, 0))

    def test_torrents_and_bounds(self) -> None:
        """Torrents newest first, at most MAX_TORRENTS; peers silent too long are dropped."""
        view = SwarmView()
        hashes = [InfoHash(Digest.of_bytes(str(i).encode()).hex) for i in range(MAX_TORRENTS + 5)]
        for i, h in enumerate(hashes):
            view.record(announce(1, 0, ih=h), now=float(i))
        listed = view.torrents(now=float(len(hashes)))
        self.assertEqual(len(listed), MAX_TORRENTS)
        self.assertEqual(listed[0]["infohash"], hashes[-1].hex)
        self.assertIsNone(view.digest_of(hashes[0]))
        late = len(hashes) + PEER_TIMEOUT + 1
        self.assertEqual(view.torrents(now=late)[0]["agents"], 0)

    def test_peer_cap(self) -> None:
        """Past MAX_PEERS agents of one torrent, newcomers are not kept one by one."""
        view = SwarmView()
        for n in range(MAX_PEERS + 3):
            req = AnnounceRequest(
                DIGEST,
                IH,
                PeerInfo(PeerID.from_address("10.1.0.1", 1000 + n), "10.1.0.1", 1000 + n),
            )
            view.record(req, now=1.0)
        self.assertEqual(view.torrents(now=1.0)[0]["agents"], MAX_PEERS)

    def test_large_blob_heat_is_bounded(self) -> None:
        """A blob of many pieces gets at most 1024 heat cells, each a mean of its pieces."""
        view = SwarmView()
        pieces = 5000
        req = AnnounceRequest(DIGEST, IH, peer(1), progress(*range(0, pieces, 2), pieces=pieces))
        view.record(req, now=1.0)
        snap = view.snapshot(IH, [], now=1.0)
        assert snap is not None
        self.assertEqual(len(snap["heat"]), 625)  # whole bytes of the bitfield: 8 pieces a cell
        self.assertEqual(set(snap["heat"]), {0.5})

    def test_heat_of_a_huge_swarm_is_bounded(self) -> None:
        """390,000 pieces and 600 downloading agents: 1024 cells from a sample of 256 agents.

        Every agent holds the first half of the pieces, so the sampled and scaled counts are
        exact: 600 holders in the first half of the cells, none in the second.
        """
        view = SwarmView()
        pieces = 48 * 1024 * 8
        half = Bitfield.of(pieces, range(pieces // 2)).to_bytes()
        for n in range(600):
            req = AnnounceRequest(
                DIGEST,
                IH,
                PeerInfo(PeerID.from_address("10.2.0.1", 1000 + n), "10.2.0.1", 1000 + n),
                AnnounceProgress(pieces, pieces * 1024, half),
            )
            view.record(req, now=1.0)
        snap = view.snapshot(IH, [], now=1.0)
        assert snap is not None
        self.assertEqual(len(snap["heat"]), 1024)
        self.assertEqual(snap["heat"][:512], [600.0] * 512)
        self.assertEqual(snap["heat"][512:], [0.0] * 512)
