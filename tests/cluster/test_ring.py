"""Tests for kraken.cluster.ring: rendezvous hashing, balance, disruption, health fallbacks."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.cluster import (
    EmptyRing,
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    RendezvousRing,
    StaticHostList,
    rendezvous_locations,
    rendezvous_rank,
    rendezvous_score,
    ring_key,
)
from kraken.core import Digest

HEX = "0123456789abcdef"
digests = st.text(alphabet=HEX, min_size=64, max_size=64).map(Digest)
member_sets = st.sets(
    st.builds("10.0.{}.{}:{}".format, st.integers(0, 3), st.integers(1, 20), st.integers(1, 3)),
    min_size=1,
    max_size=12,
)


def random_digests(count: int, seed: int) -> list[Digest]:
    """``count`` pseudo-random digests, the same ones for the same seed."""
    rng = random.Random(seed)
    return [Digest(rng.randbytes(32).hex()) for _ in range(count)]


def members(count: int) -> list[str]:
    """Origin-like member names."""
    return [f"origin{i}.dc1.example.com:15002" for i in range(count)]


def owners(keys: list[Digest], hosts: list[str]) -> list[str]:
    """The primary owner of each key with every host healthy."""
    return [rendezvous_rank(d, hosts)[0] for d in keys]


class ScoreTests(SynchronousTestCase):
    """The score function and the ring key."""

    def test_key_is_shard_id(self) -> None:
        """The ring key is the 2 bytes of the shard id, so one shard has one placement."""
        d = Digest("abcd" + "0" * 60)
        self.assertEqual(ring_key(d), b"\xab\xcd")
        same_shard = Digest("abcd" + "f" * 60)
        hosts = members(7)
        self.assertEqual(rendezvous_rank(d, hosts), rendezvous_rank(same_shard, hosts))

    def test_score_is_pinned(self) -> None:
        """
        The score of a known input never changes.

        Changing the hash would move almost every blob during a rolling
        upgrade; this catches it.
        """
        self.assertEqual(rendezvous_score(b"\xab\xcd", "origin1:15002"), 0x47A7B6020EBA7EE4)
        d = Digest("abcd" + "0" * 60)
        self.assertEqual(
            rendezvous_rank(d, ["origin1:15002", "origin2:15002", "origin3:15002"]),
            ["origin2:15002", "origin3:15002", "origin1:15002"],
        )


class DistributionTests(SynchronousTestCase):
    """Balance and minimal disruption."""

    def test_balance(self) -> None:
        """10,000 random digests over 5 members: every member owns within 15% of the mean."""
        counts = Counter(owners(random_digests(10_000, seed=1), members(5)))
        mean = 10_000 / 5
        self.assertEqual(len(counts), 5)
        for host, count in counts.items():
            self.assertLess(abs(count - mean), 0.15 * mean, f"{host} owns {count}")

    def test_balance_over_every_shard(self) -> None:
        """Over all 65,536 shards, each of 5 members owns within 3% of a fifth."""
        hosts = members(5)
        counts = Counter(
            rendezvous_rank(Digest(f"{shard:04x}" + "0" * 60), hosts)[0] for shard in range(65536)
        )
        for host, count in counts.items():
            self.assertLess(abs(count - 65536 / 5), 0.03 * 65536 / 5, f"{host} owns {count}")

    def test_replicas_balanced(self) -> None:
        """With 3 replicas every member holds about 3/5 of the keys (within 10%)."""
        keys = random_digests(10_000, seed=2)
        hosts = members(5)
        held = Counter(h for d in keys for h in rendezvous_locations(d, hosts, frozenset(hosts)))
        for host, count in held.items():
            self.assertLess(abs(count - 6000), 600, f"{host} holds {count}")

    def test_adding_a_member_moves_only_to_it(self) -> None:
        """A 6th member takes about 1/6 of the keys; no key moves between old members."""
        keys = random_digests(10_000, seed=3)
        before = owners(keys, members(5))
        after = owners(keys, members(6))
        new = members(6)[5]
        moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        self.assertEqual({a for _, a in moved}, {new})
        self.assertLess(abs(len(moved) / len(keys) - 1 / 6), 0.02, len(moved))

    def test_removing_a_member_moves_only_its_keys(self) -> None:
        """Removing a member moves exactly the keys it owned, spread over the others."""
        keys = random_digests(10_000, seed=4)
        hosts = members(5)
        gone = hosts[2]
        before = owners(keys, hosts)
        after = owners(keys, [h for h in hosts if h != gone])
        for b, a in zip(before, after, strict=True):
            if b == gone:
                self.assertNotEqual(a, gone)
            else:
                self.assertEqual(a, b)
        receivers = Counter(a for b, a in zip(before, after, strict=True) if b == gone)
        self.assertEqual(len(receivers), 4)


class LocationsTests(SynchronousTestCase):
    """Which replicas locations() returns as members go down."""

    def setUp(self) -> None:
        """Five members and one digest with its full ranking."""
        self.hosts = frozenset(members(5))
        self.digest = random_digests(1, seed=5)[0]
        self.ranked = rendezvous_rank(self.digest, self.hosts)

    def locations(self, down: set[str], max_replica: int = 3) -> list[str]:
        """locations() with the members in ``down`` unhealthy."""
        return rendezvous_locations(self.digest, self.hosts, self.hosts - down, max_replica)

    def test_all_healthy(self) -> None:
        """With everyone healthy, the top max_replica members in rank order."""
        self.assertEqual(self.locations(set()), self.ranked[:3])
        self.assertEqual(self.locations(set(), max_replica=1), self.ranked[:1])

    def test_unhealthy_replica_skipped_not_replaced(self) -> None:
        """An unhealthy member among the top is left out and the 4th is not pulled in."""
        r = self.ranked
        self.assertEqual(self.locations({r[1]}), [r[0], r[2]])
        self.assertEqual(self.locations({r[0], r[2], r[4]}), [r[1]])

    def test_all_top_unhealthy(self) -> None:
        """When the top max_replica are all down, the first healthy member below them."""
        r = self.ranked
        self.assertEqual(self.locations({r[0], r[1], r[2]}), [r[3]])
        self.assertEqual(self.locations({r[0], r[1], r[2], r[3]}), [r[4]])

    def test_none_healthy(self) -> None:
        """With nothing healthy, the top max_replica members by score."""
        self.assertEqual(self.locations(set(self.hosts)), self.ranked[:3])

    def test_more_replicas_than_members(self) -> None:
        """max_replica above the member count gives every member once."""
        self.assertEqual(self.locations(set(), max_replica=9), self.ranked)

    def test_no_members(self) -> None:
        """An empty ring has no locations."""
        self.assertEqual(rendezvous_locations(self.digest, [], frozenset()), [])


class RingPropertyTests(SynchronousTestCase):
    """Invariants of the ranking and of locations(), for any members and health."""

    @given(digests, member_sets, st.data(), st.integers(1, 6))
    def test_locations_invariants(
        self, digest: Digest, hosts: set[str], data: st.DataObject, max_replica: int
    ) -> None:
        """Deterministic, members only, no duplicates, 1..max_replica long, healthy if possible."""
        healthy = frozenset(data.draw(st.sets(st.sampled_from(sorted(hosts)))))
        shuffled = data.draw(st.permutations(sorted(hosts)))
        got = rendezvous_locations(digest, hosts, healthy, max_replica)
        self.assertEqual(got, rendezvous_locations(digest, shuffled, healthy, max_replica))
        self.assertEqual(len(got), len(set(got)))
        self.assertTrue(set(got) <= hosts)
        self.assertTrue(1 <= len(got) <= max_replica)
        ranked = rendezvous_rank(digest, hosts)
        if healthy:
            self.assertTrue(set(got) <= healthy)
            top_healthy = [h for h in ranked[:max_replica] if h in healthy]
            self.assertEqual(got, top_healthy or [next(h for h in ranked if h in healthy)])
        else:
            self.assertEqual(got, ranked[:max_replica])

    @given(digests, member_sets, st.data())
    def test_removal_keeps_relative_order(
        self, digest: Digest, hosts: set[str], data: st.DataObject
    ) -> None:
        """Removing a member leaves the others in the same order (why disruption is minimal)."""
        gone = data.draw(st.sampled_from(sorted(hosts)))
        ranked = rendezvous_rank(digest, hosts)
        self.assertEqual(rendezvous_rank(digest, hosts - {gone}), [h for h in ranked if h != gone])


class RendezvousRingTests(SynchronousTestCase):
    """The ring object over a live Membership."""

    def ring(self, hosts: list[str], max_replica: int = 3) -> tuple[RendezvousRing, Membership]:
        """A ring over a static list with passive health, not yet refreshed."""
        self.health = PassiveHealthFilter(Clock())
        membership = Membership(StaticHostList(hosts), self.health, Clock())
        return RendezvousRing(membership, max_replica), membership

    def test_empty_until_refreshed(self) -> None:
        """Before the first refresh the ring is empty and owner() raises EmptyRing."""
        ring, _ = self.ring(members(3))
        d = random_digests(1, seed=6)[0]
        self.assertEqual(ring.locations(d), [])
        self.assertRaises(EmptyRing, ring.owner, d)

    def test_follows_membership(self) -> None:
        """After a refresh the ring places digests over the members and skips unhealthy ones."""
        hosts = members(4)
        ring, membership = self.ring(hosts, max_replica=2)
        membership.startService()
        self.addCleanup(membership.stopService)
        d = random_digests(1, seed=7)[0]
        ranked = rendezvous_rank(d, hosts)
        self.assertEqual(ring.members(), frozenset(hosts))
        self.assertEqual(ring.rank(d), ranked)
        self.assertEqual(ring.locations(d), ranked[:2])
        self.assertEqual(ring.owner(d), ranked[0])
        self.assertTrue(ring.contains(hosts[0]))
        self.assertFalse(ring.contains("elsewhere:1"))
        for _ in range(3):
            self.health.failed(ranked[0])
        self.successResultOf(membership.refresh())
        self.assertEqual(ring.locations(d), [ranked[1]])
        self.assertEqual(ring.owner(d), ranked[1])

    def test_max_replica_validated(self) -> None:
        """max_replica must be a positive integer."""
        membership = Membership(StaticHostList([]), NoHealthFilter(), Clock())
        for bad in (0, -1):
            with self.assertRaises(ValueError) as e:
                RendezvousRing(membership, bad)
            self.assertIn("max_replica", str(e.exception))
