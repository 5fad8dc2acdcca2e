"""
Concurrent requests for the same thing share one piece of work.

A download of a blob, a fetch from the origin ring, a metainfo request: when ten
requests for the same key arrive while the first is still running, the work runs
once and all ten get its result.  Each caller gets a Deferred of its own, so a
caller that gives up (its client went away and its Deferred is cancelled) does
not cancel the work the others still wait for.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one run of the work per key at a time; every caller gets the outcome."""

    def __init__(self) -> None:
        self._waiters: dict[K, list[Deferred[V]]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    def run(self, key: K, work: Callable[[], Deferred[V] | V]) -> Deferred[V]:
        """``work()``'s outcome; joins the run already in flight for ``key``, if any.

        ``work`` is called only when no run for ``key`` is in flight; its result or
        failure goes to every caller that joined meanwhile, then the key is free again.
        """
        waiter: Deferred[V] = Deferred()
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._waiters[key] = [waiter]
        d: Deferred[Any] = maybeDeferred(work)
        d.addBoth(self._done, key)
        return waiter

    def _done(self, result: V | Failure, key: K) -> None:
        for waiter in self._waiters.pop(key, []):
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
