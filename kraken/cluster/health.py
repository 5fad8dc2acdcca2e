"""
Health filters: which members of a host list are usable now.

Two kinds, both behind :class:`IHealthFilter`:

* :class:`ActiveHealthFilter` probes every host on each run (the daemons wire
  the probe to ``GET /health``; :class:`HTTPHealthProbe` does that with a treq
  client).  3 consecutive failures mark a host down, 2 consecutive passes mark
  it up again; new hosts start healthy; a list of one host is always healthy.
  Cancelling a run cancels its probes (a stopping service drops them).
* :class:`PassiveHealthFilter` learns from callers, who report network errors
  with :meth:`PassiveHealthFilter.failed`.  3 failures within 5 minutes make a
  host unhealthy for 5 minutes; if every host is unhealthy, all are used.

Numbers follow the Go Kraken (reference/kraken-p2p.md section 5.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from zope.interface import Interface, implementer

from kraken.http.client import HTTPStatusError, KrakenHTTPClient, NetworkError, read_body

#: Checks one ``host:port``: the Deferred fires (with anything) if the host
#: is healthy and fails otherwise.
Probe = Callable[[str], "Deferred[object]"]

DEFAULT_FAILS = 3
DEFAULT_PASSES = 2
DEFAULT_PROBE_TIMEOUT = 3.0
DEFAULT_FAIL_TIMEOUT = 300.0

_T = TypeVar("_T")


class UnhealthyResponse(Exception):
    """A health endpoint answered something other than 200."""


class IHealthFilter(Interface):
    """Picks the healthy members of a host list."""

    def run(hosts: frozenset[str]) -> Deferred[frozenset[str]]:
        """
        The members of ``hosts`` that are healthy now (never fails).

        May probe the hosts and update what the filter knows.  May answer an
        empty set (an active filter with every host down); callers decide what
        to do then (the ring falls back to its top members).
        """


@implementer(IHealthFilter)
@frozen
class NoHealthFilter:
    """Every host is healthy (health checks disabled)."""

    def run(self, hosts: frozenset[str]) -> Deferred[frozenset[str]]:
        """All of ``hosts``."""
        return succeed(hosts)


@define
class _ProbeRecord:
    healthy: bool = True
    failures: int = 0
    passes: int = 0


@implementer(IHealthFilter)
@define
class ActiveHealthFilter:
    """
    Probes every host on each run and keeps consecutive pass/fail counts.

    A host goes down after ``fails`` consecutive failed probes and comes back
    after ``passes`` consecutive good ones.  A probe that has not answered
    after ``timeout`` seconds is cancelled and counts as a failure, so one
    run takes at most ``timeout`` seconds (probes run concurrently).  Hosts
    that leave the list are forgotten; hosts that join start healthy.
    Cancelling the Deferred of :meth:`run` cancels its probes, which then
    count neither way.
    """

    log = Logger()

    probe: Probe
    clock: IReactorTime
    fails: int = DEFAULT_FAILS
    passes: int = DEFAULT_PASSES
    timeout: float = DEFAULT_PROBE_TIMEOUT
    _records: dict[str, _ProbeRecord] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if self.fails < 1 or self.passes < 1 or self.timeout <= 0:
            raise ValueError(
                f"health check: fails ({self.fails}) and passes ({self.passes}) must be "
                f"at least 1 and timeout ({self.timeout}) positive"
            )

    def run(self, hosts: frozenset[str]) -> Deferred[frozenset[str]]:
        """Probe all of ``hosts`` at once and answer those healthy afterwards."""
        if len(hosts) <= 1:
            self._records.clear()
            return succeed(hosts)
        for gone in self._records.keys() - hosts:
            del self._records[gone]
        for host in hosts:
            self._records.setdefault(host, _ProbeRecord())
        rounds = [self._check(host) for host in sorted(hosts)]
        return gatherResults(rounds).addCallback(lambda _: self.healthy(hosts))

    def healthy(self, hosts: frozenset[str]) -> frozenset[str]:
        """The members of ``hosts`` not marked down, without probing."""
        if len(hosts) <= 1:
            return hosts
        return frozenset(h for h in hosts if (r := self._records.get(h)) is None or r.healthy)

    def _check(self, host: str) -> Deferred[None]:
        probed = maybeDeferred(self.probe, host)
        probed.addTimeout(self.timeout, self.clock)
        return probed.addCallbacks(
            lambda _: self._passed(host), lambda reason: self._failed(host, reason)
        )

    def _passed(self, host: str) -> None:
        record = self._records.get(host)
        if record is None:
            return
        record.failures = 0
        record.passes += 1
        if not record.healthy and record.passes >= self.passes:
            record.healthy = True
            self.log.info("{host} is healthy again", host=host)

    def _failed(self, host: str, reason: Failure) -> None:
        record = self._records.get(host)
        if record is None or isinstance(reason.value, CancelledError):
            return  # a timeout arrives as TimeoutError; this is the caller's cancel
        record.passes = 0
        record.failures += 1
        if record.healthy and record.failures >= self.fails:
            record.healthy = False
            self.log.warn(
                "{host} is unhealthy after {count} failed checks: {error}",
                host=host,
                count=record.failures,
                error=reason.getErrorMessage(),
            )


@implementer(IHealthFilter)
@define
class PassiveHealthFilter:
    """
    Marks a host unhealthy when callers report enough network errors.

    ``fails`` reports within ``fail_timeout`` seconds make the host unhealthy
    for the next ``fail_timeout`` seconds.  Callers report only network
    errors (refused, reset, timed out), never HTTP error statuses.  When every
    host is unhealthy, :meth:`run` answers all of them: a degraded cluster is
    better than none.
    """

    log = Logger()

    clock: IReactorTime
    fails: int = DEFAULT_FAILS
    fail_timeout: float = DEFAULT_FAIL_TIMEOUT
    _failures: dict[str, deque[float]] = field(factory=dict, init=False)
    _down_until: dict[str, float] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if self.fails < 1 or self.fail_timeout <= 0:
            raise ValueError(
                f"passive health check: fails ({self.fails}) must be at least 1 and "
                f"fail_timeout ({self.fail_timeout}) positive"
            )

    def failed(self, host: str) -> None:
        """Record a network error talking to ``host``."""
        now = self.clock.seconds()
        recent = self._failures.setdefault(host, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.fail_timeout:
            recent.popleft()
        if len(recent) >= self.fails:
            del self._failures[host]
            self._down_until[host] = now + self.fail_timeout
            self.log.warn(
                "{host} is unhealthy for {seconds}s after {count} network errors",
                host=host,
                seconds=self.fail_timeout,
                count=len(recent),
            )

    def healthy(self, hosts: frozenset[str]) -> frozenset[str]:
        """The members of ``hosts`` not currently marked down, or all if none is left."""
        now = self.clock.seconds()
        for host, until in list(self._down_until.items()):
            if until <= now:
                del self._down_until[host]
        usable = hosts - self._down_until.keys()
        return usable or hosts

    def run(self, hosts: frozenset[str]) -> Deferred[frozenset[str]]:
        """:meth:`healthy`, as a Deferred."""
        return succeed(self.healthy(hosts))

    async def first_answer(
        self,
        hosts: Iterable[str],
        send: Callable[[str], Awaitable[_T]],
        nobody: Callable[[str], Exception],
    ) -> tuple[str, _T]:
        """
        The first of ``hosts``, in order, that ``send`` reaches, and its answer.

        A :class:`~kraken.http.client.NetworkError` is recorded with :meth:`failed` and
        the next host tried; any other failure (an HTTP status refused) is the answer's.
        When no host answers, raises ``nobody(reasons)``: the network errors joined by
        ``"; "``, empty when ``hosts`` was.
        """
        errors: list[str] = []
        for host in hosts:
            try:
                return host, await send(host)
            except NetworkError as e:
                self.failed(host)
                errors.append(str(e))
        raise nobody("; ".join(errors))


@frozen
class HTTPHealthProbe:
    """
    A :data:`Probe` that GETs ``http://<host:port>/health`` and wants a 200.

    ``client`` comes from the shared factory in :mod:`kraken.http`, which
    turns the URL into https when TLS is configured and applies the
    timeout.  No retries: one failed round is one failure, and the filter's
    thresholds decide.
    """

    client: KrakenHTTPClient
    timeout: float = 3.0

    def __call__(self, host: str) -> Deferred[object]:
        """Probe ``host``; fails with :class:`UnhealthyResponse` on a non-200 answer."""
        url = f"http://{host}/health"

        def drain(response: IResponse) -> Deferred[object]:
            # Read the body so that the pooled connection can be reused; unlike
            # treq.content, read_body drops the connection when cancelled.
            return read_body(response, 4096).addCallback(lambda _: None)

        def status_error(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, HTTPStatusError):
                raise UnhealthyResponse(f"GET {url} answered {error.status}")
            return failure

        return (
            self.client.get(url, retry=False, timeout=self.timeout)
            .addCallback(drain)
            .addErrback(status_error)
        )
