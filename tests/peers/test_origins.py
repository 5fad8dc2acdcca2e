"""
HTTPOriginCluster against fake origins over in-memory HTTP: locations, peer contexts,
metainfo failover, readiness, caching.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kraken.cluster import Membership, NoHealthFilter, StaticHostList
from kraken.core import MetaInfo, PeerInfo
from kraken.http.client import NO_RETRY
from kraken.http.testing import memory_client_factory
from kraken.peers.origins import (
    HTTPOriginCluster,
    IOriginCluster,
    MetaInfoAnswer,
    OriginUnavailable,
)
from tests.peers.fakeorigin import FakeOrigin

INFO = MetaInfo.of_bytes(b"x" * 10000, 1024)
OTHER = MetaInfo.of_bytes(b"y" * 10000, 1024)


class OriginClusterTests(SynchronousTestCase):
    """Three fake origins; the blob lives on the first two."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.o = [FakeOrigin(f"10.1.0.{i}", 15002) for i in (1, 2, 3)]
        for origin in self.o:
            origin.locations = [self.o[0].address, self.o[1].address]
            origin.blobs[INFO.digest] = INFO
        factory, self.agent = memory_client_factory(
            {o.address: o.resource() for o in self.o}, self.clock, retry=NO_RETRY
        )
        membership = Membership(
            StaticHostList([o.address for o in self.o]), NoHealthFilter(), self.clock
        )
        self.successResultOf(membership.refresh())
        self.cluster = HTTPOriginCluster(factory.client(), membership, self.clock)

    def total(self, kind: str) -> int:
        """Requests of ``kind`` served by all fake origins."""
        return sum(o.calls[kind] for o in self.o)

    def test_before_the_first_refresh(self) -> None:
        """A lookup before the membership's first refresh waits for it instead of failing."""
        factory, _ = memory_client_factory(
            {o.address: o.resource() for o in self.o}, self.clock, retry=NO_RETRY
        )
        fresh = Membership(
            StaticHostList([o.address for o in self.o]), NoHealthFilter(), self.clock
        )
        cluster = HTTPOriginCluster(factory.client(), fresh, self.clock)
        self.assertEqual(
            self.successResultOf(cluster.locations(INFO.digest)),
            [self.o[0].address, self.o[1].address],
        )

    def test_interface(self) -> None:
        """HTTPOriginCluster provides IOriginCluster."""
        self.assertTrue(verifyObject(IOriginCluster, self.cluster))

    def test_origin_peers(self) -> None:
        """The blob's origins come back as complete origin peers with their stable ids."""
        peers = self.successResultOf(self.cluster.origin_peers(INFO.digest))
        self.assertEqual(
            peers,
            [PeerInfo(o.peer_id, o.ip, o.port, origin=True, complete=True) for o in self.o[:2]],
        )

    def test_cached(self) -> None:
        """Locations and peer contexts are cached for 10 s."""
        self.successResultOf(self.cluster.origin_peers(INFO.digest))
        self.successResultOf(self.cluster.origin_peers(INFO.digest))
        self.assertEqual((self.total("locations"), self.total("peercontext")), (1, 2))
        self.clock.advance(10)
        self.successResultOf(self.cluster.origin_peers(INFO.digest))
        self.assertEqual((self.total("locations"), self.total("peercontext")), (2, 4))

    def test_locations_from_any_origin(self) -> None:
        """With two origins down, the third still gives the locations."""
        self.agent.remove(self.o[0].address)
        self.agent.remove(self.o[1].address)
        self.assertEqual(
            self.successResultOf(self.cluster.locations(INFO.digest)),
            [self.o[0].address, self.o[1].address],
        )

    def test_down_origin_skipped(self) -> None:
        """An origin whose peer context fails is left out; the others are returned."""
        self.agent.remove(self.o[0].address)
        peers = self.successResultOf(self.cluster.origin_peers(INFO.digest))
        self.assertEqual([p.peer_id for p in peers], [self.o[1].peer_id])

    def test_all_down(self) -> None:
        """When no origin answers, origin_peers fails with OriginUnavailable."""
        for o in self.o:
            self.agent.remove(o.address)
        self.failureResultOf(self.cluster.origin_peers(INFO.digest), OriginUnavailable)

    def test_metainfo_from_owner(self) -> None:
        """A 200 from the first location is validated and returned; the namespace is escaped."""
        answer = self.successResultOf(self.cluster.metainfo("library/ubuntu", INFO.digest))
        self.assertEqual(answer, MetaInfoAnswer(200, INFO.to_json()))
        self.assertEqual(self.o[0].calls["metainfo"], 1)
        self.assertEqual(self.o[0].namespaces, ["library/ubuntu"])
        self.assertIn("library%2Fubuntu", self.agent.requests[-1].url)

    def test_metainfo_failover(self) -> None:
        """A network error on the owner makes the next location answer."""
        self.successResultOf(self.cluster.locations(INFO.digest))
        self.agent.remove(self.o[0].address)
        answer = self.successResultOf(self.cluster.metainfo("ns", INFO.digest))
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.o[1].calls["metainfo"], 1)

    def test_metainfo_statuses(self) -> None:
        """202 and 404 from the owner are passed through without asking the next one."""
        self.o[0].pending.add(INFO.digest)
        self.assertEqual(self.successResultOf(self.cluster.metainfo("ns", INFO.digest)).status, 202)
        del self.o[0].blobs[INFO.digest]
        self.o[0].pending.clear()
        self.assertEqual(self.successResultOf(self.cluster.metainfo("ns", INFO.digest)).status, 404)
        self.assertEqual(self.o[1].calls["metainfo"], 0)

    def test_metainfo_of_wrong_blob(self) -> None:
        """Metainfo for another digest from one origin is not passed on; the next is asked."""
        self.o[0].blobs[INFO.digest] = OTHER
        answer = self.successResultOf(self.cluster.metainfo("ns", INFO.digest))
        self.assertEqual(answer, MetaInfoAnswer(200, INFO.to_json()))

    def test_metainfo_nobody(self) -> None:
        """When every location fails, metainfo fails with OriginUnavailable."""
        self.successResultOf(self.cluster.locations(INFO.digest))
        self.agent.remove(self.o[0].address)
        self.agent.remove(self.o[1].address)
        self.failureResultOf(self.cluster.metainfo("ns", INFO.digest), OriginUnavailable)

    def test_ready(self) -> None:
        """Ready while any origin's /health is 200; not when all are down or unhealthy."""
        self.assertTrue(self.successResultOf(self.cluster.ready()))
        self.o[0].healthy = self.o[1].healthy = False
        self.assertTrue(self.successResultOf(self.cluster.ready()))
        self.agent.remove(self.o[2].address)
        self.assertFalse(self.successResultOf(self.cluster.ready()))
