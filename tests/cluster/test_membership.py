"""Tests for kraken.cluster.membership: the refreshing membership service."""

from __future__ import annotations

from attrs import define, field
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.cluster import (
    ActiveHealthFilter,
    HostListUnavailable,
    IHealthFilter,
    IHostList,
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    RendezvousRing,
)
from kraken.core import Digest


@implementer(IHostList)
@define
class ScriptedHostList:
    """A host list whose answer the test changes; counts resolves; can fail or hang."""

    hosts: frozenset[str]
    resolves: int = 0
    broken: bool = False
    pending: list[Deferred[frozenset[str]]] | None = None

    def resolve(self) -> Deferred[frozenset[str]]:
        """The current hosts, a failure, or a Deferred the test fires later."""
        self.resolves += 1
        if self.broken:
            return fail(RuntimeError("host list broke"))
        if self.pending is not None:
            d: Deferred[frozenset[str]] = Deferred()
            self.pending.append(d)
            return d
        return succeed(self.hosts)


@implementer(IHealthFilter)
@define
class FixedHealth:
    """A health filter that reports a fixed set as healthy."""

    healthy: frozenset[str] = field(factory=frozenset)

    def run(self, hosts: frozenset[str]) -> Deferred[frozenset[str]]:
        """The fixed set (deliberately not limited to ``hosts``)."""
        return succeed(self.healthy)


class MembershipTests(SynchronousTestCase):
    """Membership snapshots, refresh scheduling, watchers, failures."""

    def setUp(self) -> None:
        """A scripted host list of three and a clock."""
        self.clock = Clock()
        self.hosts = ScriptedHostList(frozenset({"a:1", "b:1", "c:1"}))
        self.changes: list[frozenset[str]] = []

    def membership(self, health: IHealthFilter | None = None) -> Membership:
        """A membership over the scripted list, recording member changes."""
        m = Membership(self.hosts, health or NoHealthFilter(), self.clock)
        m.add_watcher(self.changes.append)
        return m

    def start(self, m: Membership) -> None:
        """Start ``m`` and stop it at the end of the test."""
        m.startService()
        self.addCleanup(m.stopService)

    def test_is_a_service(self) -> None:
        """Membership provides IService and can be parented to a daemon's MultiService."""
        m = self.membership()
        self.assertTrue(verifyObject(IService, m))
        parent = MultiService()
        m.setServiceParent(parent)
        parent.startService()
        self.assertTrue(m.running)
        self.assertEqual(m.members, self.hosts.hosts)
        parent.stopService()
        self.assertFalse(m.running)

    def test_refreshes_at_start_and_every_interval(self) -> None:
        """The first refresh happens at start, then one every 10 s, none after stop."""
        m = self.membership()
        self.assertEqual(m.members, frozenset())
        m.startService()
        self.assertEqual(self.hosts.resolves, 1)
        self.assertEqual(m.members, self.hosts.hosts)
        self.clock.advance(9.9)
        self.assertEqual(self.hosts.resolves, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.hosts.resolves, 2)
        self.clock.pump([10, 10])
        self.assertEqual(self.hosts.resolves, 4)
        m.stopService()
        self.clock.advance(100)
        self.assertEqual(self.hosts.resolves, 4)

    def test_watchers_told_on_member_change_only(self) -> None:
        """Watchers hear about the first members and each change, not identical refreshes."""
        m = self.membership()
        self.start(m)
        self.clock.advance(10)
        self.assertEqual(self.changes, [frozenset({"a:1", "b:1", "c:1"})])
        self.hosts.hosts = frozenset({"a:1", "d:1"})
        self.clock.advance(10)
        self.assertEqual(self.changes[-1], frozenset({"a:1", "d:1"}))
        self.assertEqual(m.members, frozenset({"a:1", "d:1"}))
        m.remove_watcher(self.changes.append)
        self.hosts.hosts = frozenset({"e:1"})
        self.clock.advance(10)
        self.assertEqual(len(self.changes), 2)

    def test_health_changes_do_not_notify(self) -> None:
        """A change of health alone updates healthy but does not call watchers."""
        health = FixedHealth(frozenset({"a:1", "b:1", "c:1"}))
        m = self.membership(health)
        self.start(m)
        health.healthy = frozenset({"a:1"})
        self.clock.advance(10)
        self.assertEqual(m.healthy, frozenset({"a:1"}))
        self.assertEqual(len(self.changes), 1)

    def test_healthy_limited_to_members(self) -> None:
        """healthy never contains a host that is not a member."""
        m = self.membership(FixedHealth(frozenset({"a:1", "zz:1"})))
        self.start(m)
        self.assertEqual(m.healthy, frozenset({"a:1"}))

    def test_usable(self) -> None:
        """usable() is the healthy members, or all members when none is healthy."""
        health = FixedHealth(frozenset({"b:1"}))
        m = self.membership(health)
        self.start(m)
        self.assertEqual(m.usable(), frozenset({"b:1"}))
        health.healthy = frozenset()
        self.successResultOf(m.refresh())
        self.assertEqual(m.usable(), self.hosts.hosts)

    def test_failing_watcher_logged(self) -> None:
        """A watcher that raises is logged; the other watchers are still called."""
        m = Membership(self.hosts, NoHealthFilter(), self.clock)

        def broken(members: frozenset[str]) -> None:
            raise ValueError("watcher broke")

        m.add_watcher(broken)
        m.add_watcher(self.changes.append)
        self.successResultOf(m.refresh())
        self.assertEqual(self.changes, [self.hosts.hosts])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_refresh_failure_keeps_snapshot(self) -> None:
        """A failing host list is logged, the last members are kept and refreshing continues."""
        m = self.membership()
        self.start(m)
        self.hosts.broken = True
        self.clock.advance(10)
        self.assertEqual(m.members, self.hosts.hosts)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.hosts.broken = False
        self.hosts.hosts = frozenset({"x:1"})
        self.clock.advance(10)
        self.assertEqual(m.members, frozenset({"x:1"}))

    def test_unavailable_host_list_warns(self) -> None:
        """A host list with no members yet is a warning, not a logged error, and retried."""
        self.hosts.pending = []
        m = self.membership()
        self.start(m)
        self.hosts.pending.pop().errback(HostListUnavailable("no DNS answer yet"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(m.members, frozenset())
        self.clock.advance(10)
        self.hosts.pending.pop().callback(frozenset({"a:1"}))
        self.assertEqual(m.members, frozenset({"a:1"}))

    def test_stop_cancels_refresh_in_flight(self) -> None:
        """Stopping cancels the probes of a running refresh and fires once it has finished."""
        probes: list[Deferred[object]] = []
        cancelled: list[str] = []

        def probe(host: str) -> Deferred[object]:
            d: Deferred[object] = Deferred(lambda _: cancelled.append(host))
            probes.append(d)
            return d

        m = self.membership(ActiveHealthFilter(probe, self.clock))
        m.startService()
        self.assertEqual(len(probes), 3)
        stopped = m.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(sorted(cancelled), sorted(self.hosts.hosts))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Idle, it stops at once; a refresh after that is not the stopped one.
        m.startService()
        for d in probes[3:]:
            d.callback(None)
        self.successResultOf(m.stopService())
        self.assertEqual(len(cancelled), 3)

    def test_concurrent_refresh_shares(self) -> None:
        """A refresh asked for while one is running waits for it instead of starting another."""
        self.hosts.pending = []
        m = self.membership()
        first, second = m.refresh(), m.refresh()
        self.assertEqual(self.hosts.resolves, 1)
        self.assertNoResult(second)
        self.hosts.pending[0].callback(frozenset({"q:1"}))
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(m.members, frozenset({"q:1"}))
        self.hosts.pending = None
        self.successResultOf(m.refresh())
        self.assertEqual(self.hosts.resolves, 2)

    def test_slow_refresh_delays_next(self) -> None:
        """The loop does not start a refresh while the previous one is still running."""
        self.hosts.pending = []
        m = self.membership()
        self.start(m)
        self.clock.advance(30)
        self.assertEqual(self.hosts.resolves, 1)
        self.hosts.pending[0].callback(self.hosts.hosts)
        self.clock.advance(10)
        self.assertEqual(self.hosts.resolves, 2)

    def test_bad_interval(self) -> None:
        """A non-positive interval is rejected."""
        self.assertRaises(ValueError, Membership, self.hosts, NoHealthFilter(), self.clock, 0)


class EndToEndTests(SynchronousTestCase):
    """Membership, health filters and the ring together, driven by the clock."""

    def test_active_checks_move_replicas(self) -> None:
        """A host failing probes leaves the ring after 3 failed rounds, returns after 2 passes."""
        clock = Clock()
        down: set[str] = set()

        def probe(host: str) -> Deferred[object]:
            if host in down:
                return fail(ConnectionError(host))
            return succeed(None)

        hosts = ScriptedHostList(frozenset({"o1:15002", "o2:15002", "o3:15002", "o4:15002"}))
        membership = Membership(hosts, ActiveHealthFilter(probe, clock), clock)
        ring = RendezvousRing(membership, max_replica=2)
        membership.startService()
        self.addCleanup(membership.stopService)
        digest = Digest("0" * 64)
        first, second = ring.rank(digest)[:2]
        self.assertEqual(ring.locations(digest), [first, second])
        down.add(first)
        clock.pump([10, 10])
        self.assertEqual(ring.locations(digest), [first, second])
        clock.advance(10)
        self.assertEqual(ring.locations(digest), [second])
        self.assertEqual(ring.owner(digest), second)
        down.clear()
        clock.advance(10)
        self.assertEqual(ring.locations(digest), [second])
        clock.advance(10)
        self.assertEqual(ring.locations(digest), [first, second])

    def test_passive_reports_take_effect_at_refresh(self) -> None:
        """Network errors reported to a passive filter change the ring at the next refresh."""
        clock = Clock()
        health = PassiveHealthFilter(clock)
        hosts = ScriptedHostList(frozenset({"t1:15003", "t2:15003"}))
        membership = Membership(hosts, health, clock)
        ring = RendezvousRing(membership, max_replica=1)
        membership.startService()
        self.addCleanup(membership.stopService)
        digest = Digest("1" * 64)
        owner = ring.owner(digest)
        for _ in range(3):
            health.failed(owner)
        self.assertEqual(ring.owner(digest), owner)
        clock.advance(10)
        self.assertNotEqual(ring.owner(digest), owner)
        clock.advance(300)
        self.assertEqual(ring.owner(digest), owner)
