"""
The announce handout policy: order, limits, never the requester (hypothesis over random stores).
"""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import PeerID, PeerInfo
from kraken.peers.handout import (
    PRIORITY_COMPLETE_AGENT,
    PRIORITY_INCOMPLETE_AGENT,
    PRIORITY_ORIGIN,
    hand_out,
    hand_out_stored,
    priority,
)
from kraken.peers.store import StoredPeer

ids = st.integers(min_value=0, max_value=300).map(lambda n: PeerID(f"{n:040x}"))


def agents(min_size: int = 0, max_size: int = 200) -> st.SearchStrategy[list[PeerInfo]]:
    """Lists of agent records with distinct ids (what a store returns)."""
    return st.lists(
        st.builds(
            PeerInfo, ids, st.just("10.0.0.1"), st.integers(1, 65535), st.just(False), st.booleans()
        ),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda p: p.peer_id,
    )


origins = st.lists(
    st.builds(
        PeerInfo, ids, st.just("10.1.0.1"), st.integers(1, 65535), st.just(True), st.just(True)
    ),
    max_size=5,
)


class HandoutTests(SynchronousTestCase):
    """Properties of :func:`hand_out`."""

    @given(agents(), origins, ids, st.integers(0, 60), st.randoms(use_true_random=False))
    def test_invariants(self, store, origin_list, me, limit, rng) -> None:
        """
        The requester is never handed out; ids are unique; at most ``limit`` agents; every
        origin (but the requester) is included; the order is complete agents, origins,
        incomplete agents; every agent handed out came from the store.
        """
        requester = PeerInfo(me, "10.2.0.1", 5000, complete=False)
        out = hand_out(requester, store, origin_list, limit=limit, rng=rng)
        out_ids = [p.peer_id for p in out]
        self.assertNotIn(me, out_ids)
        self.assertEqual(len(out_ids), len(set(out_ids)))
        origin_ids = {o.peer_id for o in origin_list} - {me}
        self.assertEqual({p.peer_id for p in out if p.origin}, origin_ids)
        handed_agents = [p for p in out if not p.origin]
        self.assertLessEqual(len(handed_agents), limit)
        self.assertTrue(set(handed_agents) <= set(store))
        available = {p.peer_id for p in store} - origin_ids - {me}
        self.assertEqual(len(handed_agents), min(limit, len(available)))
        prios = [priority(p) for p in out]
        self.assertEqual(prios, sorted(prios))

    @given(agents(min_size=120, max_size=200), st.randoms(use_true_random=False))
    def test_fifty_by_default(self, store, rng) -> None:
        """With more than 50 agents and no origins, exactly 50 are handed out."""
        requester = PeerInfo(PeerID("f" * 40), "10.2.0.1", 5000)
        self.assertEqual(len(hand_out(requester, store, [], rng=rng)), 50)

    def test_order_example(self) -> None:
        """A concrete mix is ordered complete agents, origins, incomplete agents."""
        c = PeerInfo(PeerID("1" * 40), "10.0.0.1", 1, complete=True)
        i = PeerInfo(PeerID("2" * 40), "10.0.0.2", 2, complete=False)
        o = PeerInfo(PeerID("3" * 40), "10.0.0.3", 3, origin=True, complete=True)
        me = PeerInfo(PeerID("4" * 40), "10.0.0.4", 4)
        out = hand_out(me, [i, me, c], [o], rng=random.Random(1))
        self.assertEqual(out, [c, o, i])
        self.assertEqual(
            [priority(p) for p in out],
            [PRIORITY_COMPLETE_AGENT, PRIORITY_ORIGIN, PRIORITY_INCOMPLETE_AGENT],
        )

    def test_origin_is_marked_complete(self) -> None:
        """Origins are handed out as origin=True, complete=True whatever their record said."""
        o = PeerInfo(PeerID("3" * 40), "10.0.0.3", 3, origin=True, complete=False)
        me = PeerInfo(PeerID("4" * 40), "10.0.0.4", 4)
        (got,) = hand_out(me, [], [o])
        self.assertTrue(got.origin and got.complete)

    def test_complete_requester_gets_nobody(self) -> None:
        """A requester that is already complete gets an empty list (it has nothing to fetch)."""
        c = PeerInfo(PeerID("1" * 40), "10.0.0.1", 1, complete=True)
        o = PeerInfo(PeerID("3" * 40), "10.0.0.3", 3, origin=True, complete=True)
        me = PeerInfo(PeerID("4" * 40), "10.0.0.4", 4, complete=True)
        self.assertEqual(hand_out(me, [c], [o]), [])

    def test_randomised(self) -> None:
        """Different draws from 100 agents hand out different subsets."""
        store = [PeerInfo(PeerID(f"{n:040x}"), "10.0.0.1", 1) for n in range(100)]
        me = PeerInfo(PeerID("f" * 40), "10.2.0.1", 5000)
        rng = random.Random(7)
        draws = {frozenset(hand_out(me, store, [], rng=rng)) for _ in range(5)}
        self.assertGreater(len(draws), 1)


def stored(peers: list[PeerInfo]) -> list[StoredPeer]:
    """The records of ``peers`` (what IPeerStore.announce answers)."""
    return [StoredPeer.of(p) for p in peers]


def as_origin(p: PeerInfo) -> PeerInfo:
    """``p`` as the tracker caches an origin: origin and complete."""
    return PeerInfo(p.peer_id, p.ip, p.port, origin=True, complete=True)


class StoredHandoutTests(SynchronousTestCase):
    """:func:`hand_out_stored` follows the same policy as :func:`hand_out`."""

    @given(agents(), origins, ids, st.integers(0, 60), st.randoms(use_true_random=False))
    def test_same_policy_as_hand_out(self, store, origin_list, me, limit, rng) -> None:
        """
        Same invariants as hand_out, and the same answer up to which agents were chosen:
        the same origins, as many agents, every agent from the store, the order complete
        agents, origins, incomplete agents; with no more agents than the limit, the same peers.
        """
        requester = PeerInfo(me, "10.2.0.1", 5000, complete=False)
        origin_records = stored([as_origin(o) for o in origin_list])
        out = [
            r.peer_info()
            for r in hand_out_stored(requester, stored(store), origin_records, limit, rng)
        ]
        reference = hand_out(requester, store, origin_list, limit=limit, rng=random.Random(0))
        self.assertNotIn(me, [p.peer_id for p in out])
        self.assertEqual(len(out), len({p.peer_id for p in out}))
        self.assertEqual({p for p in out if p.origin}, {p for p in reference if p.origin})
        self.assertEqual(len(out), len(reference))
        self.assertTrue({p for p in out if not p.origin} <= set(store))
        prios = [priority(p) for p in out]
        self.assertEqual(prios, sorted(prios))
        if len([p for p in reference if not p.origin]) < limit:
            self.assertEqual(set(out), set(reference))

    def test_first_agents_when_over_limit(self) -> None:
        """Over the limit, the first ``limit`` agents (already in random order) are handed out."""
        store = [PeerInfo(PeerID(f"{n:040x}"), "10.0.0.1", 1) for n in range(60)]
        me = PeerInfo(PeerID("f" * 40), "10.2.0.1", 5000)
        out = hand_out_stored(me, stored(store), [], limit=50)
        self.assertEqual([r.peer_info() for r in out], store[:50])

    def test_complete_requester_gets_nobody(self) -> None:
        """A complete requester gets an empty list here too."""
        me = PeerInfo(PeerID("4" * 40), "10.0.0.4", 4, complete=True)
        c = PeerInfo(PeerID("1" * 40), "10.0.0.1", 1, complete=True)
        self.assertEqual(hand_out_stored(me, stored([c]), []), [])

    def test_record_json_is_the_peer_dict(self) -> None:
        """A record's JSON is the compact JSON of PeerInfo.to_dict(), and converts back."""
        p = PeerInfo(PeerID("ab" * 20), "2001:db8::1", 65535, origin=True, complete=True)
        record = StoredPeer.of(p)
        self.assertEqual(json.loads(record.json), p.to_dict())
        self.assertNotIn(b" ", record.json)
        self.assertEqual(record.peer_info(), p)
        self.assertEqual(
            (record.peer_id, record.origin, record.complete), (p.peer_id.hex, True, True)
        )
