"""
kraken.io.singleflight: concurrent requests for one key share one run of the work.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from kraken.io import SingleFlight


class SingleFlightTests(SynchronousTestCase):
    """One run per key in flight; every caller gets its outcome; the key frees up after."""

    def test_callers_share_one_run(self) -> None:
        """Three callers of one key start the work once and all get its result."""
        flight: SingleFlight[str, int] = SingleFlight()
        runs: list[Deferred[int]] = []

        def work() -> Deferred[int]:
            runs.append(Deferred())
            return runs[-1]

        waiters = [flight.run("a", work) for _ in range(3)]
        other = flight.run("b", work)
        self.assertEqual(len(runs), 2)
        self.assertIn("a", flight)
        runs[0].callback(7)
        self.assertEqual([self.successResultOf(w) for w in waiters], [7, 7, 7])
        self.assertNotIn("a", flight)
        self.assertNoResult(other)
        flight.run("a", work)  # a new run once the first is over
        self.assertEqual(len(runs), 3)

    def test_failure_reaches_every_caller(self) -> None:
        """A failing run fails every caller with the same error."""
        flight: SingleFlight[str, int] = SingleFlight()
        run: Deferred[int] = Deferred()
        first, second = flight.run("k", lambda: run), flight.run("k", lambda: run)
        run.errback(KeyError("gone"))
        self.failureResultOf(first, KeyError)
        self.failureResultOf(second, KeyError)

    def test_cancelled_caller_does_not_cancel_the_run(self) -> None:
        """A caller that gives up leaves the run to the others."""
        flight: SingleFlight[str, int] = SingleFlight()
        run: Deferred[int] = Deferred()
        quitter, stayer = flight.run("k", lambda: run), flight.run("k", lambda: run)
        quitter.cancel()
        self.failureResultOf(quitter)
        self.assertFalse(run.called)
        run.callback(1)
        self.assertEqual(self.successResultOf(stayer), 1)

    def test_synchronous_work(self) -> None:
        """Work that returns a plain value (or an already-fired Deferred) is fine."""
        flight: SingleFlight[str, int] = SingleFlight()
        self.assertEqual(self.successResultOf(flight.run("k", lambda: 3)), 3)
        self.assertEqual(self.successResultOf(flight.run("k", lambda: succeed(4))), 4)
        self.assertEqual(len(flight), 0)

    def test_then_and_after_order(self) -> None:
        """
        Each caller's ``then`` runs when the result arrives, in joining order, even for work
        that finishes at once; the flight's ``after`` runs once, after all of them, and not
        for a failure.
        """
        events: list[str] = []
        flight: SingleFlight[str, int] = SingleFlight(
            after=lambda key, value: events.append(f"after {key} {value}")
        )
        run: Deferred[int] = Deferred()
        first = flight.run("k", lambda: run, then=lambda v: events.append(f"first {v}"))
        second = flight.run("k", lambda: run, then=lambda v: events.append(f"second {v}"))
        plain = flight.run("k", lambda: run)
        run.callback(5)
        self.assertEqual(events, ["first 5", "second 5", "after k 5"])
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.successResultOf(plain), 5)
        events.clear()
        at_once = flight.run("n", lambda: 6, then=lambda v: events.append(f"at once {v}"))
        self.assertEqual(events, ["at once 6", "after n 6"])
        self.successResultOf(at_once)
        events.clear()
        failing = flight.run("f", lambda: 1 // 0, then=lambda v: events.append("then"))
        self.failureResultOf(failing, ZeroDivisionError)
        self.assertEqual(events, [])
