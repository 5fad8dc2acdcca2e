"""
Cluster membership: a host list and a health filter, refreshed on an interval.

:class:`Membership` is a Twisted service: parent it to a daemon's
``MultiService`` and it refreshes every ``interval`` seconds (10 by default,
first at start) on the injected clock.  The hash ring and any client that
needs "a healthy upstream" read its :attr:`Membership.members` and
:attr:`Membership.healthy` snapshots, which never block.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.cluster.health import IHealthFilter
from kraken.cluster.hostlist import HostListUnavailable, IHostList

DEFAULT_REFRESH_INTERVAL = 10.0

#: Called with the new members whenever the set of members changes.
Watcher = Callable[[frozenset[str]], object]


@define(slots=False, eq=False)
class Membership(Service):
    """
    The members of a cluster and which of them are healthy.

    Both sets start empty and are replaced by each :meth:`refresh`.  Watchers
    are told when the members change (health changes alone do not notify:
    watchers such as bandwidth sharing care about who is in the cluster, not
    who answers right now).  A refresh never fails: errors are logged and the
    last snapshot is kept.
    """

    log = Logger()

    hosts: IHostList
    health: IHealthFilter
    clock: IReactorTime
    interval: float = DEFAULT_REFRESH_INTERVAL
    members: frozenset[str] = field(factory=frozenset, init=False)
    healthy: frozenset[str] = field(factory=frozenset, init=False)
    _watchers: list[Watcher] = field(factory=list, init=False)
    _loop: LoopingCall | None = field(default=None, init=False)
    _waiting: list[Deferred[None]] | None = field(default=None, init=False)
    _refreshing: Deferred[None] | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"membership refresh interval must be positive, got {self.interval}")

    def usable(self) -> frozenset[str]:
        """The healthy members, or every member if none is healthy."""
        return self.healthy or self.members

    def add_watcher(self, watcher: Watcher) -> None:
        """Call ``watcher(members)`` after every change of the members."""
        self._watchers.append(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        """Stop calling ``watcher``."""
        self._watchers.remove(watcher)

    def refresh(self) -> Deferred[None]:
        """
        Resolve the host list, run the health filter, update the snapshots.

        A call made while a refresh is running waits for that one instead of
        starting another.
        """
        if self._waiting is not None:
            waiter: Deferred[None] = Deferred()
            self._waiting.append(waiter)
            return waiter
        self._waiting = []
        refreshed = self.hosts.resolve().addCallback(self._filter)
        refreshed.addErrback(self._refresh_failed).addBoth(self._wake)
        if self._waiting is not None:  # still running: stopService may cancel it
            self._refreshing = refreshed
        return refreshed

    def _filter(self, members: frozenset[str]) -> Deferred[None]:
        def apply(healthy: frozenset[str]) -> None:
            changed = members != self.members
            self.members = members
            self.healthy = healthy & members
            if changed:
                self._notify(members)

        return self.health.run(members).addCallback(apply)

    def _notify(self, members: frozenset[str]) -> None:
        self.log.info("cluster members are now {members}", members=sorted(members))
        for watcher in list(self._watchers):
            try:
                watcher(members)
            except Exception:
                self.log.failure("membership watcher {watcher!r} failed", watcher=watcher)

    def _refresh_failed(self, reason: Failure) -> None:
        if isinstance(reason.value, CancelledError):
            return
        if isinstance(reason.value, HostListUnavailable):
            self.log.warn("cluster has no members yet: {error}", error=reason.getErrorMessage())
        else:
            self.log.failure("cluster membership refresh failed; keeping the last one", reason)

    def _wake(self, _: object) -> None:
        waiting, self._waiting = self._waiting or [], None
        self._refreshing = None
        for waiter in waiting:
            waiter.callback(None)

    def startService(self) -> None:
        """Refresh now, then every ``interval`` seconds."""
        super().startService()  # type: ignore[no-untyped-call]
        loop = self._loop = LoopingCall(self.refresh)
        loop.clock = self.clock
        loop.start(self.interval, now=True).addErrback(
            lambda reason: self.log.failure("membership refresh loop stopped", reason)
        )

    def stopService(self) -> Deferred[None]:
        """Stop refreshing and cancel a refresh in progress (its probes with it).

        Fires when the cancelled refresh has finished, so that no health
        check outlives the service (and its connection the HTTP pool's close).
        The snapshots keep their last values.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()  # type: ignore[no-untyped-call]
        refreshing = self._refreshing
        if refreshing is None:
            return succeed(None)
        finished: Deferred[None] = Deferred()

        def finish(result: object) -> object:
            finished.callback(None)
            return result

        refreshing.addBoth(finish)
        refreshing.cancel()
        return finished
