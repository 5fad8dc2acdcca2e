"""Tests for kraken.core.peer."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import InvalidPeerInfo, PeerID, PeerInfo


class PeerIDTests(SynchronousTestCase):
    """Peer identities."""

    def test_random_ids_differ(self) -> None:
        """Random ids are 40 hex characters and distinct."""
        a, b = PeerID.random(), PeerID.random()
        self.assertNotEqual(a, b)
        self.assertEqual(len(a.hex), 40)

    def test_from_address_is_stable_sha1(self) -> None:
        """Origins' ids are the sha1 of ip:port."""
        self.assertEqual(
            PeerID.from_address("10.0.0.1", 15001).hex,
            hashlib.sha1(b"10.0.0.1:15001").hexdigest(),
        )

    @given(st.binary(min_size=20, max_size=20))
    def test_bytes_round_trip(self, raw: bytes) -> None:
        """The raw form round-trips."""
        self.assertEqual(PeerID.from_bytes(raw).to_bytes(), raw)

    def test_invalid(self) -> None:
        """Bad ids are rejected."""
        self.assertRaises(InvalidPeerInfo, PeerID, "A" * 40)
        self.assertRaises(InvalidPeerInfo, PeerID, "a" * 39)
        self.assertRaises(InvalidPeerInfo, PeerID.from_bytes, b"x" * 19)


class PeerInfoTests(SynchronousTestCase):
    """Peer records from the network."""

    good = {
        "peer_id": "a" * 40,
        "ip": "127.0.0.1",
        "port": 16001,
        "origin": False,
        "complete": True,
    }

    def test_round_trip(self) -> None:
        """to_dict and from_dict are inverse."""
        info = PeerInfo.from_dict(self.good)
        self.assertEqual(info.to_dict(), self.good)
        self.assertEqual(info.address, "127.0.0.1:16001")

    def test_ipv6_address(self) -> None:
        """IPv6 addresses are bracketed in ip:port form."""
        self.assertEqual(PeerInfo.from_dict({**self.good, "ip": "::1"}).address, "[::1]:16001")

    def test_errors_name_the_field(self) -> None:
        """Each bad field produces an error naming it."""
        cases = [
            ({**self.good, "port": 0}, "port"),
            ({**self.good, "port": 70000}, "port"),
            ({**self.good, "port": "80"}, "port"),
            ({**self.good, "port": True}, "port"),
            ({**self.good, "ip": "not-an-ip"}, "ip"),
            ({**self.good, "ip": 3}, "ip"),
            ({**self.good, "peer_id": "xyz"}, "peer_id"),
            ({**self.good, "origin": "yes"}, "origin"),
            ({**self.good, "complete": 1}, "complete"),
            ({k: v for k, v in self.good.items() if k != "ip"}, "ip"),
        ]
        for obj, name in cases:
            with self.assertRaises(InvalidPeerInfo) as e:
                PeerInfo.from_dict(obj)
            self.assertTrue(str(e.exception).startswith(name), str(e.exception))
        self.assertRaises(InvalidPeerInfo, PeerInfo.from_dict, [])
