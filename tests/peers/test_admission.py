"""
The announce admission policy, the quarantine of unreachable peers, and the tracker
daemon's settings for both (issue 18).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.core import InfoHash, PeerID, PeerInfo
from kraken.core.address import impossible_peer_reason, parse_ip, parse_networks
from kraken.peers.admission import AdmissionPolicy, AnnounceForbidden, Source
from kraken.peers.announce import InvalidAnnounce
from kraken.peers.quarantine import Quarantine
from kraken.services.tracker import build_tracker

IH = InfoHash("a" * 64)


def peer(ip: str, n: int = 1) -> PeerInfo:
    """Agent ``n`` announcing ``ip``."""
    return PeerInfo(PeerID(f"{n:040x}"), ip, 16001)


class AddressTests(SynchronousTestCase):
    """kraken.core.address."""

    def test_parse_ip(self) -> None:
        """IPv4-mapped IPv6 is the IPv4 address; a zone is dropped; junk is a ValueError."""
        self.assertEqual(str(parse_ip("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertEqual(str(parse_ip("fe80::1%eth0")), "fe80::1")
        self.assertRaises(ValueError, parse_ip, "host.example")

    def test_impossible(self) -> None:
        """Each kind of impossible address is named; ordinary ones are possible."""
        cases = {
            "0.0.0.0": "unspecified",
            "::": "unspecified",
            "239.1.1.1": "multicast",
            "169.254.169.254": "link-local",
            "fe80::9": "link-local",
            "255.255.255.255": "reserved",
            "10.0.0.1": None,
            "2001:db8::1": None,
            "127.0.0.1": None,  # judged by the caller, who knows the client
        }
        for ip, reason in cases.items():
            self.assertEqual(impossible_peer_reason(parse_ip(ip)), reason, ip)


class AdmissionPolicyTests(SynchronousTestCase):
    """AdmissionPolicy.source and admit."""

    def test_direct_client(self) -> None:
        """Without forwarders the TCP peer is the source, whatever X-Forwarded-For says."""
        policy = AdmissionPolicy()
        source = policy.source("10.0.0.5", b"10.0.0.6")
        self.assertEqual(source, Source(parse_ip("10.0.0.5"), parse_ip("10.0.0.5")))
        self.assertEqual(policy.admit(peer("10.0.0.5"), source), peer("10.0.0.5"))
        self.assertRaises(AnnounceForbidden, policy.admit, peer("10.0.0.6"), source)

    def test_ipv6_spellings(self) -> None:
        """One IPv6 host written two ways is one address; it is stored in canonical form."""
        policy = AdmissionPolicy()
        source = policy.source("2001:db8::1", None)
        admitted = policy.admit(peer("2001:0db8:0:0::1"), source)
        self.assertEqual(admitted.ip, "2001:db8::1")

    def test_unix_socket_client_is_local(self) -> None:
        """A client that is not an IP connection (a UNIX socket) is a local forwarder."""
        source = AdmissionPolicy().source(None, None)
        self.assertTrue(source.local)
        self.assertEqual(AdmissionPolicy().admit(peer("10.0.0.7"), source), peer("10.0.0.7"))

    def test_forwarded_header_bounded(self) -> None:
        """More than 16 X-Forwarded-For addresses are refused (400), not walked."""
        policy = AdmissionPolicy(parse_networks(["127.0.0.1/32"]))
        header = b",".join(b"10.0.0.%d" % i for i in range(17))
        self.assertRaises(InvalidAnnounce, policy.source, "127.0.0.1", header)

    def test_identity(self) -> None:
        """A client is its address, on loopback its address and peer id."""
        self.assertEqual(AdmissionPolicy.identity(peer("10.0.0.5", 1)), "10.0.0.5")
        self.assertNotEqual(
            AdmissionPolicy.identity(peer("127.0.0.1", 1)),
            AdmissionPolicy.identity(peer("127.0.0.1", 2)),
        )


class QuarantineTests(SynchronousTestCase):
    """Quarantine: reports within the window, distinct reporters, the end of a quarantine."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.quarantine = Quarantine(self.clock.seconds, duration=300, reporters=2)

    def test_reports_older_than_the_window_do_not_count(self) -> None:
        """Two reports 300 s apart are not two reporters of the same failure."""
        self.assertEqual(self.quarantine.report(IH, ["p"], "10.0.0.1"), [])
        self.clock.advance(300)
        self.assertEqual(self.quarantine.report(IH, ["p"], "10.0.0.2"), [])
        self.clock.advance(1)
        self.assertEqual(self.quarantine.report(IH, ["p"], "10.0.0.3"), ["p"])

    def test_held_until_the_end(self) -> None:
        """A quarantined peer is held for the duration, per torrent; then forgotten."""
        self.quarantine.report(IH, ["p"], "a")
        self.quarantine.report(IH, ["p"], "b")
        self.assertEqual(self.quarantine.held(IH), {"p": 300.0})
        self.assertIsNone(self.quarantine.held(InfoHash("b" * 64)))
        self.clock.advance(299)
        self.assertIsNotNone(self.quarantine.held(IH))
        self.clock.advance(1)
        self.assertIsNone(self.quarantine.held(IH))

    def test_bounded(self) -> None:
        """Past max_entries the reports start over (memory stays bounded)."""
        small = Quarantine(self.clock.seconds, reporters=2, max_entries=10)
        for i in range(25):
            small.report(IH, [f"p{i}"], "a")
        self.assertLessEqual(len(small._reports), 10)


class TrackerSettingsTests(SynchronousTestCase):
    """The tracker daemon passes its ``admission`` settings on."""

    def test_defaults_and_settings(self) -> None:
        """Defaults: no forwarders, 4 per address, 300 s, 2 reporters; each can be set."""
        default = build_tracker(parse_config("tracker", {}), Clock())
        self.assertEqual(default.api.admission, AdmissionPolicy())
        self.assertEqual(default.store.max_per_address, 4)  # type: ignore[attr-defined]
        self.assertEqual(
            (default.api.quarantine.duration, default.api.quarantine.reporters), (300, 2)
        )
        config = parse_config(
            "tracker",
            {
                "admission": {
                    "trusted_forwarders": ["10.1.0.0/16"],
                    "max_peers_per_address": 0,
                    "quarantine": "1m",
                    "quarantine_reporters": 3,
                }
            },
        )
        tree = build_tracker(config, Clock())
        self.assertEqual(tree.api.admission.trusted_forwarders, parse_networks(["10.1.0.0/16"]))
        self.assertEqual(tree.store.max_per_address, 0)  # type: ignore[attr-defined]
        self.assertEqual((tree.api.quarantine.duration, tree.api.quarantine.reporters), (60, 3))
