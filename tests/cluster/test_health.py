"""Tests for kraken.cluster.health: active and passive health filters, the HTTP probe."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from kraken.cluster.health import (
    ActiveHealthFilter,
    HTTPHealthProbe,
    IHealthFilter,
    NoHealthFilter,
    PassiveHealthFilter,
    UnhealthyResponse,
)
from kraken.http.client import NetworkError
from kraken.http.testing import memory_client_factory

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

HOSTS = frozenset({"a:1", "b:1", "c:1"})


@define
class ControllableProbe:
    """A probe whose answers the test gives by firing the recorded Deferreds."""

    pending: dict[str, Deferred[object]] = field(factory=dict)
    cancelled: list[str] = field(factory=list)

    def __call__(self, host: str) -> Deferred[object]:
        """Start a probe of ``host`` that stays pending until the test fires it."""
        d: Deferred[object] = Deferred(lambda _: self.cancelled.append(host))
        self.pending[host] = d
        return d

    def answer(self, failing: Collection[str] = (), silent: Collection[str] = ()) -> None:
        """Fire every pending probe: fail those in ``failing``, leave ``silent`` unanswered."""
        pending, self.pending = self.pending, {}
        for host, d in pending.items():
            if host in silent:
                continue
            if host in failing:
                d.errback(ConnectionRefusedError(host))
            else:
                d.callback(None)


class HealthFilterTestsMixin(_Base):
    """The IHealthFilter contract every filter meets when nothing has failed yet."""

    def health_filter(self) -> IHealthFilter:
        """A fresh filter whose hosts all answer."""
        raise NotImplementedError()

    def test_interface(self) -> None:
        """The filter provides IHealthFilter."""
        self.assertTrue(verifyObject(IHealthFilter, self.health_filter()))

    def test_new_hosts_healthy(self) -> None:
        """Hosts the filter has never seen fail are all healthy."""
        self.assertEqual(self.successResultOf(self.health_filter().run(HOSTS)), HOSTS)

    def test_empty_and_single(self) -> None:
        """No hosts gives no hosts; one host is that host."""
        f = self.health_filter()
        self.assertEqual(self.successResultOf(f.run(frozenset())), frozenset())
        self.assertEqual(self.successResultOf(f.run(frozenset({"a:1"}))), frozenset({"a:1"}))


class NoHealthFilterTests(HealthFilterTestsMixin, SynchronousTestCase):
    """NoHealthFilter passes everything."""

    def health_filter(self) -> IHealthFilter:
        """The no-op filter."""
        return NoHealthFilter()


class ActiveHealthFilterTests(HealthFilterTestsMixin, SynchronousTestCase):
    """ActiveHealthFilter: consecutive thresholds, timeouts, membership changes."""

    def setUp(self) -> None:
        """A clock, a controllable probe and a filter with the default thresholds."""
        self.clock = Clock()
        self.probe = ControllableProbe()
        self.filter = ActiveHealthFilter(self.probe, self.clock)

    def health_filter(self) -> IHealthFilter:
        """An active filter whose probes pass at once."""
        return ActiveHealthFilter(lambda host: succeed(None), Clock())

    def round(
        self,
        failing: Collection[str] = (),
        hosts: frozenset[str] = HOSTS,
    ) -> frozenset[str]:
        """One run in which the hosts in ``failing`` fail their probe; the healthy result."""
        ran = self.filter.run(hosts)
        self.assertEqual(set(self.probe.pending), set(hosts))
        self.assertNoResult(ran)
        self.probe.answer(failing)
        return self.successResultOf(ran)

    def test_down_after_three_failures(self) -> None:
        """A host is healthy after 2 consecutive failures and down after the 3rd."""
        self.assertEqual(self.round({"a:1"}), HOSTS)
        self.assertEqual(self.round({"a:1"}), HOSTS)
        self.assertEqual(self.round({"a:1"}), HOSTS - {"a:1"})
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"a:1"})

    def test_up_after_two_passes(self) -> None:
        """A down host stays down after 1 pass and is up after the 2nd consecutive pass."""
        for _ in range(3):
            self.round({"a:1"})
        self.assertEqual(self.round(), HOSTS - {"a:1"})
        self.assertEqual(self.round(), HOSTS)

    def test_counts_are_consecutive(self) -> None:
        """A pass resets the failure count, and a failure resets the pass count."""
        self.round({"a:1"})
        self.round({"a:1"})
        self.round()
        self.round({"a:1"})
        self.assertEqual(self.round({"a:1"}), HOSTS)
        self.assertEqual(self.round({"a:1"}), HOSTS - {"a:1"})
        self.round()
        self.round({"a:1"})
        self.assertEqual(self.round(), HOSTS - {"a:1"})
        self.assertEqual(self.round(), HOSTS)

    def test_silent_probe_times_out(self) -> None:
        """A probe that never answers is cancelled after 3 s and counts as a failure."""
        for n in range(3):
            ran = self.filter.run(HOSTS)
            self.probe.answer(silent={"b:1"})
            self.clock.advance(2.9)
            self.assertNoResult(ran)
            self.clock.advance(0.1)
            result = self.successResultOf(ran)
            self.assertEqual(self.probe.cancelled, ["b:1"] * (n + 1))
        self.assertEqual(result, HOSTS - {"b:1"})

    def test_cancelled_run_cancels_probes(self) -> None:
        """Cancelling a run cancels every probe in flight; cancelled probes count neither way."""
        for _ in range(3):
            ran = self.filter.run(HOSTS)
            ran.cancel()
            self.assertEqual(self.successResultOf(ran), HOSTS)
        self.assertEqual(sorted(self.probe.cancelled), sorted(sorted(HOSTS) * 3))
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Two failures before and one after the cancelled runs do not add up to three.
        self.round({"a:1"})
        self.round({"a:1"})
        self.filter.run(HOSTS).cancel()
        self.assertEqual(self.round({"a:1"}), HOSTS - {"a:1"})

    def test_probe_raising_is_failure(self) -> None:
        """A probe that raises synchronously counts as a failure, not a crash."""

        def broken(host: str) -> Deferred[object]:
            if host == "a:1":
                raise RuntimeError("boom")
            return succeed(None)

        f = ActiveHealthFilter(broken, self.clock, fails=1)
        self.assertEqual(self.successResultOf(f.run(HOSTS)), HOSTS - {"a:1"})

    def test_all_down(self) -> None:
        """When every host is down the filter says so (the ring decides the fallback)."""
        for _ in range(3):
            result = self.round(set(HOSTS))
        self.assertEqual(result, frozenset())

    def test_single_host_always_healthy(self) -> None:
        """A one-host list is healthy without being probed."""
        one = frozenset({"a:1"})
        for _ in range(5):
            self.assertEqual(self.successResultOf(self.filter.run(one)), one)
        self.assertEqual(self.probe.pending, {})

    def test_departed_host_forgotten(self) -> None:
        """A down host that leaves and comes back starts healthy again."""
        for _ in range(3):
            self.round({"a:1"})
        self.round(hosts=HOSTS - {"a:1"})
        self.assertEqual(self.round({"a:1"}), HOSTS)

    def test_thresholds_configurable(self) -> None:
        """fails and passes change the thresholds; bad values are rejected."""
        self.filter = ActiveHealthFilter(self.probe, self.clock, fails=1, passes=1)
        self.assertEqual(self.round({"c:1"}), HOSTS - {"c:1"})
        self.assertEqual(self.round(), HOSTS)
        for bad in ({"fails": 0}, {"passes": 0}, {"timeout": 0.0}):
            self.assertRaises(ValueError, ActiveHealthFilter, self.probe, self.clock, **bad)


class PassiveHealthFilterTests(HealthFilterTestsMixin, SynchronousTestCase):
    """PassiveHealthFilter: failure windows and the all-unhealthy fallback."""

    def setUp(self) -> None:
        """A clock and a filter with the defaults (3 failures in 300 s -> down 300 s)."""
        self.clock = Clock()
        self.filter = PassiveHealthFilter(self.clock)

    def health_filter(self) -> IHealthFilter:
        """A fresh passive filter."""
        return PassiveHealthFilter(Clock())

    def report(self, host: str, times: int = 1) -> None:
        """Report ``times`` network errors for ``host``."""
        for _ in range(times):
            self.filter.failed(host)

    def test_three_failures_in_window(self) -> None:
        """Two failures leave a host healthy; the third within 5 min makes it unhealthy."""
        self.report("a:1", 2)
        self.clock.advance(299)
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.report("a:1")
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"a:1"})
        self.assertEqual(self.successResultOf(self.filter.run(HOSTS)), HOSTS - {"a:1"})

    def test_old_failures_expire(self) -> None:
        """Failures older than the window do not count."""
        self.report("a:1")
        self.clock.advance(200)
        self.report("a:1")
        self.clock.advance(100)
        self.report("a:1")
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.report("a:1")
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"a:1"})

    def test_unhealthy_for_fail_timeout(self) -> None:
        """An unhealthy host is healthy again 5 min later, with its count reset."""
        self.report("a:1", 3)
        self.clock.advance(299.9)
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"a:1"})
        self.clock.advance(0.1)
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.report("a:1")
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)

    def test_all_unhealthy_uses_all(self) -> None:
        """When every host is unhealthy, all of them are used."""
        for host in HOSTS:
            self.report(host, 3)
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.assertEqual(self.filter.healthy(frozenset({"a:1", "d:1"})), frozenset({"d:1"}))

    def test_configurable(self) -> None:
        """fails and fail_timeout are configurable; bad values are rejected."""
        self.filter = PassiveHealthFilter(self.clock, fails=1, fail_timeout=10)
        self.report("b:1")
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"b:1"})
        self.clock.advance(10)
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)
        self.assertRaises(ValueError, PassiveHealthFilter, self.clock, fails=0)
        self.assertRaises(ValueError, PassiveHealthFilter, self.clock, fail_timeout=0)

    def test_first_answer_skips_network_errors(self) -> None:
        """first_answer tries hosts in order past network errors, which it records; the
        first host that answers, and its answer, come back."""
        self.filter = PassiveHealthFilter(self.clock, fails=1)
        tried: list[str] = []

        def send(host: str) -> Deferred[str]:
            tried.append(host)
            if host == "a:1":
                return fail(NetworkError(f"http://{host}/", "refused"))
            return succeed(f"answer of {host}")

        answer = self.filter.first_answer(["a:1", "b:1", "c:1"], send, RuntimeError)
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(answer)), ("b:1", "answer of b:1")
        )
        self.assertEqual(tried, ["a:1", "b:1"])
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS - {"a:1"})

    def test_first_answer_keeps_other_failures(self) -> None:
        """A failure that is not a network error (an HTTP status) is the answer: no other
        host is tried and the host stays healthy."""
        tried: list[str] = []

        def send(host: str) -> Deferred[str]:
            tried.append(host)
            return fail(ValueError(host))

        answer = self.filter.first_answer(["a:1", "b:1"], send, RuntimeError)
        self.failureResultOf(Deferred.fromCoroutine(answer), ValueError)
        self.assertEqual(tried, ["a:1"])
        self.assertEqual(self.filter.healthy(HOSTS), HOSTS)

    def test_first_answer_nobody(self) -> None:
        """When no host answers, ``nobody`` makes the error from the network errors
        (an empty string for no hosts)."""

        def send(host: str) -> Deferred[str]:
            return fail(NetworkError(f"http://{host}/", "reset"))

        answer = self.filter.first_answer(["a:1", "b:1"], send, RuntimeError)
        failure = self.failureResultOf(Deferred.fromCoroutine(answer), RuntimeError)
        self.assertEqual(
            str(failure.value),
            "GET http://a:1/: network error: reset; GET http://b:1/: network error: reset",
        )
        nobody = self.filter.first_answer([], send, RuntimeError)
        failure = self.failureResultOf(Deferred.fromCoroutine(nobody), RuntimeError)
        self.assertEqual(str(failure.value), "")


class HealthResource(Resource):
    """Answers GET /health with a configurable status code."""

    isLeaf = True

    def __init__(self, code: int) -> None:
        """Serve ``code``."""
        super().__init__()
        self.code = code
        self.paths: list[bytes] = []

    def render_GET(self, request: Request) -> bytes:
        """Record the path and answer the configured code."""
        self.paths.append(request.path)
        request.setResponseCode(self.code if request.path == b"/health" else 404)
        return b"ok"


class HTTPHealthProbeTests(SynchronousTestCase):
    """HTTPHealthProbe against an in-memory web resource."""

    def probe(self, code: int) -> tuple[Deferred[object], HealthResource]:
        """Probe a host whose /health answers ``code``."""
        resource = HealthResource(code)
        factory, _ = memory_client_factory({"origin:15002": resource}, Clock())
        probe = HTTPHealthProbe(factory.client())
        return probe("origin:15002"), resource

    def test_ok(self) -> None:
        """A 200 from /health passes."""
        probed, resource = self.probe(200)
        self.assertIsNone(self.successResultOf(probed))
        self.assertEqual(resource.paths, [b"/health"])

    def test_error_status(self) -> None:
        """A non-200 answer fails with UnhealthyResponse naming the URL and code."""
        probed, _ = self.probe(503)
        reason = self.failureResultOf(probed, UnhealthyResponse)
        self.assertIn("http://origin:15002/health", str(reason.value))
        self.assertIn("503", str(reason.value))
