"""The collapsing cache: TTL by value, error TTL, collapsing, size bound, cancellation."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.peers.cache import HIT, JOINED, MISS, CollapsingCache


class CollapsingCacheTests(SynchronousTestCase):
    """Behaviour of :class:`CollapsingCache`."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: list[str] = []
        self.cache: CollapsingCache[str, int] = CollapsingCache(
            self.clock,
            lambda v: 10.0 if v > 0 else 0.0,
            error_ttl=1.0,
            max_entries=2,
            observe=self.seen.append,
        )

    def test_ttl_by_value(self) -> None:
        """A value is kept for its ttl; a value with ttl 0 is not kept."""
        self.assertEqual(self.successResultOf(self.cache.get("a", lambda: succeed(1))), 1)
        self.assertEqual(self.successResultOf(self.cache.get("a", lambda: succeed(2))), 1)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(self.cache.get("a", lambda: succeed(2))), 2)
        self.successResultOf(self.cache.get("z", lambda: succeed(0)))
        self.assertEqual(self.successResultOf(self.cache.get("z", lambda: succeed(-1))), -1)
        self.assertEqual(self.seen, [MISS, HIT, MISS, MISS, MISS])

    def test_errors_kept_error_ttl(self) -> None:
        """A failure is re-raised for error_ttl seconds, then fetched again."""
        self.failureResultOf(self.cache.get("a", lambda: fail(KeyError("x"))), KeyError)
        self.failureResultOf(self.cache.get("a", lambda: succeed(1)), KeyError)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(self.cache.get("a", lambda: succeed(1))), 1)

    def test_collapse_and_cancel(self) -> None:
        """Concurrent gets share one fetch; cancelling one waiter leaves the others served."""
        fetches: list[Deferred[int]] = []

        def fetch() -> Deferred[int]:
            fetches.append(Deferred())
            return fetches[-1]

        waiters = [self.cache.get("a", fetch) for _ in range(5)]
        self.assertEqual(len(fetches), 1)
        waiters[0].cancel()
        self.failureResultOf(waiters[0])
        fetches[0].callback(7)
        self.assertEqual([self.successResultOf(w) for w in waiters[1:]], [7] * 4)
        self.assertEqual(self.seen, [MISS] + [JOINED] * 4)

    def test_size_bound(self) -> None:
        """Beyond max_entries the oldest stored value is dropped."""
        for key in "abc":
            self.cache.get(key, lambda: succeed(1))
        self.assertEqual(len(self.cache), 2)
        self.assertEqual(self.successResultOf(self.cache.get("a", lambda: succeed(5))), 5)
