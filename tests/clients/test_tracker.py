"""
The agent's tracker client against two real TrackerAPI apps over in-memory HTTP:
ring choice, failover with passive health, HTTP errors, metainfo polling and giving up.
"""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kraken.api.tracker import TrackerAPI
from kraken.clients.tracker import (
    InvalidTrackerResponse,
    MetaInfoNotFound,
    MetaInfoTimeout,
    PollPolicy,
    TrackerClient,
    TrackerUnavailable,
)
from kraken.cluster import (
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    RendezvousRing,
    StaticHostList,
)
from kraken.core import Digest, MetaInfo, PeerID, PeerInfo
from kraken.http.client import HTTPStatusError
from kraken.http.testing import memory_client_factory
from kraken.peers.announce import AnnounceRequest
from kraken.peers.origins import IOriginCluster, MetaInfoAnswer
from kraken.peers.store import MemoryPeerStore

INFO = MetaInfo.of_bytes(b"z" * 5000, 1024)
ORIGIN = PeerInfo(PeerID.from_address("10.1.0.1", 15001), "10.1.0.1", 15001, True, True)


@implementer(IOriginCluster)
class ScriptedOrigins:
    """Origins whose metainfo answers follow a script (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[MetaInfoAnswer] = [MetaInfoAnswer(200, INFO.to_json())]
        self.asked = 0

    def origin_peers(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        return succeed([ORIGIN])

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfoAnswer]:
        self.asked += 1
        answer = self.script[0] if len(self.script) == 1 else self.script.pop(0)
        return succeed(answer)

    def ready(self) -> Deferred[bool]:
        return succeed(True)


def me(n: int = 1, complete: bool = False) -> PeerInfo:
    """An agent on this host (the in-memory HTTP client's requests come from 127.0.0.1)."""
    return PeerInfo(PeerID(f"{n:040x}"), "127.0.0.1", 16001, complete=complete)


class TrackerClientTests(SynchronousTestCase):
    """Two trackers, t1 and t2, in one ring."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.origins = ScriptedOrigins()
        self.apis = {
            name: TrackerAPI(MemoryPeerStore(self.clock), self.origins, self.clock)
            for name in ("t1:15003", "t2:15003")
        }
        factory, self.agent = memory_client_factory(
            {n: a.resource() for n, a in self.apis.items()}, self.clock
        )
        membership = Membership(StaticHostList(list(self.apis)), NoHealthFilter(), self.clock)
        self.successResultOf(membership.refresh())
        self.ring = RendezvousRing(membership)
        self.health = PassiveHealthFilter(self.clock)
        self.client = TrackerClient(
            factory.client(), self.ring, self.health, self.clock, rng=random.Random(0)
        )
        self.owner, self.second = self.ring.rank(INFO.digest)

    def announce(self, peer: PeerInfo) -> Deferred[object]:
        """Announce ``peer`` for INFO."""
        return self.client.announce(AnnounceRequest(INFO.digest, INFO.infohash, peer))

    def stored(self, tracker: str) -> list[PeerInfo]:
        """The peers tracker ``tracker`` has for INFO."""
        store = self.apis[tracker].peers
        return self.successResultOf(store.get_peers(INFO.infohash, 100))

    def test_announce_to_owner(self) -> None:
        """The announce goes to the top-ranked tracker and returns its peers and interval."""
        answer = self.successResultOf(self.announce(me(1)))
        self.assertEqual(answer.peers, (ORIGIN,))
        self.assertEqual(answer.interval_seconds, 3.0)
        self.assertEqual(self.stored(self.owner), [me(1)])
        self.assertEqual(self.stored(self.second), [])

    def test_failover_and_passive_health(self) -> None:
        """A refused owner fails over to the next; after 3 failures it is tried last."""
        self.agent.remove(self.owner)
        for n in range(3):
            self.successResultOf(self.announce(me(n)))
        self.assertEqual(len(self.stored(self.second)), 3)
        self.assertEqual(self.client.trackers_for(INFO.digest), [self.second, self.owner])
        before = len(self.agent.requests)
        self.successResultOf(self.announce(me(9)))
        self.assertEqual(len(self.agent.requests), before + 1)

    def test_all_down(self) -> None:
        """With every tracker refusing, announce fails with TrackerUnavailable."""
        for name in self.apis:
            self.agent.remove(name)
        self.failureResultOf(self.announce(me()), TrackerUnavailable)

    def test_http_error_returned(self) -> None:
        """An HTTP error status is returned to the caller without failing over."""
        bad = AnnounceRequest(INFO.digest, INFO.infohash, me())
        # PeerInfo refuses a bad port; smuggle one past it to make the tracker answer 400.
        object.__setattr__(bad.peer, "port", 70000)
        failure = self.failureResultOf(self.client.announce(bad), HTTPStatusError)
        self.assertEqual(failure.value.status, 400)
        self.assertEqual(len(self.agent.requests), 1)

    def test_metainfo(self) -> None:
        """A 200 metainfo is returned as a validated MetaInfo."""
        self.assertEqual(self.successResultOf(self.client.metainfo("ns", INFO.digest)), INFO)

    def test_metainfo_polls_on_202(self) -> None:
        """Two 202s are polled again after ~1 s and ~1.3 s; then the 200 is returned."""
        self.origins.script = [
            MetaInfoAnswer(202),
            MetaInfoAnswer(202),
            MetaInfoAnswer(200, INFO.to_json()),
        ]
        d = self.client.metainfo("ns", INFO.digest)
        self.assertNoResult(d)
        self.clock.advance(0.94)
        self.assertNoResult(d)
        self.clock.advance(0.12)
        self.assertNoResult(d)
        self.clock.advance(1.4)
        self.assertEqual(self.successResultOf(d), INFO)
        self.assertEqual(self.origins.asked, 3)

    def test_metainfo_404(self) -> None:
        """A 404 fails with MetaInfoNotFound."""
        self.origins.script = [MetaInfoAnswer(404)]
        self.failureResultOf(self.client.metainfo("ns", INFO.digest), MetaInfoNotFound)

    def test_metainfo_gives_up(self) -> None:
        """Still 202 after 15 minutes: MetaInfoTimeout, not before."""
        self.origins.script = [MetaInfoAnswer(202)]
        d = self.client.metainfo("ns", INFO.digest)
        self.clock.pump([1.0] * 880)
        self.assertNoResult(d)
        self.clock.pump([1.0] * 30)
        self.failureResultOf(d, MetaInfoTimeout)

    def test_metainfo_wrong_blob(self) -> None:
        """A tracker answering another blob's metainfo is an InvalidTrackerResponse."""
        other = MetaInfo.of_bytes(b"other", 1024)
        self.origins.script = [MetaInfoAnswer(200, other.to_json())]
        # The tracker validates only the origin's answers; here the fake origin lies to it.
        self.failureResultOf(self.client.metainfo("ns", INFO.digest), InvalidTrackerResponse)


class PollPolicyTests(SynchronousTestCase):
    """The metainfo poll backoff."""

    def test_sequence(self) -> None:
        """1 s, x1.3 each time, capped at 5 s, within 5 % jitter."""
        policy = PollPolicy()
        rng = random.Random(3)
        expected = [1.0, 1.3, 1.69, 2.197, 2.8561, 3.71293, 4.826809, 5.0, 5.0]
        for attempt, base in enumerate(expected):
            delay = policy.delay(attempt, rng)
            self.assertTrue(base * 0.95 <= delay <= base * 1.05, (attempt, delay))
