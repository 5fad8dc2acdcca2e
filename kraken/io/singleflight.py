"""
Concurrent requests for the same thing share one piece of work.

A download of a blob, a fetch from the origin ring, a metainfo request: when ten
requests for the same key arrive while the first is still running, the work runs
once and all ten get its result.  Each caller gets a Deferred of its own, so a
caller that gives up (its client went away and its Deferred is cancelled) does
not cancel the work the others still wait for.

Two hooks order what happens when the result arrives, for work whose result must not take
effect until every caller has reacted to it (the peer node registers each download with
the engine before the new torrent's first actions run, which may finish or drop it): a
caller's ``then`` is attached to its Deferred before the work can start, so it runs when
the result arrives even if the work finished at once (a synchronous runner); and the
flight's ``after`` runs once every caller has been given a successful result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, overload

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class SingleFlight(Generic[K, V]):
    """At most one run of the work per key at a time; every caller gets the outcome.

    ``after(key, result)``, if given, is called once every caller of a successful run
    has been given ``result`` (and its ``then`` has run).
    """

    def __init__(self, *, after: Callable[[K, V], object] | None = None) -> None:
        self._waiters: dict[K, list[Deferred[V]]] = {}
        self._after = after

    def __contains__(self, key: K) -> bool:
        return key in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    @overload
    def run(self, key: K, work: Callable[[], Deferred[V] | V]) -> Deferred[V]: ...

    @overload
    def run(
        self, key: K, work: Callable[[], Deferred[V] | V], then: Callable[[V], Deferred[R] | R]
    ) -> Deferred[R]: ...

    def run(
        self,
        key: K,
        work: Callable[[], Deferred[V] | V],
        then: Callable[[V], Any] | None = None,
    ) -> Deferred[Any]:
        """``work()``'s outcome; joins the run already in flight for ``key``, if any.

        ``work`` is called only when no run for ``key`` is in flight; its result or
        failure goes to every caller that joined meanwhile, in the order they joined,
        then the key is free again.  ``then`` (for a result, not a failure) is this
        caller's first callback, attached before ``work`` is called.
        """
        waiter: Deferred[V] = Deferred()
        result: Deferred[Any] = waiter if then is None else waiter.addCallback(then)
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return result
        self._waiters[key] = [waiter]
        d: Deferred[Any] = maybeDeferred(work)
        d.addBoth(self._done, key)
        return result

    def _done(self, result: V | Failure, key: K) -> None:
        for waiter in self._waiters.pop(key, []):
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        if self._after is not None and not isinstance(result, Failure):
            self._after(key, result)
