"""
The components a daemon calls, checked apart from its own readiness.

``GET /readiness`` says whether this daemon can serve its own requests: a load balancer or
Kubernetes takes it out of service when it cannot.  Whether the components it calls answer
(the tracker for an agent, the origin ring for a tracker, a proxy or a build-index) is
another question: if one origin going down made every tracker, proxy, build-index and agent
"not ready", Kubernetes would pull the whole cluster out of service at once, including the
parts that still serve (agents serve cached blobs, trackers answer announces).

:class:`Dependencies` runs named checks every ``interval`` seconds and on demand; the results
go to the ``kraken_dependency_up{dependency}`` gauge of the daemon's ``/metrics`` (1 up, 0 down,
NaN before the first check) and to ``GET /dependencies``, a JSON document with each
dependency's state and the reason it is down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from attrs import define, field
from prometheus_client import CollectorRegistry, Gauge
from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["CHECK_INTERVAL", "Dependencies", "DependencyCheck"]

#: A named check: fires when the dependency answers, fails with the reason otherwise.
DependencyCheck = tuple[str, Callable[[], Deferred[Any]]]

CHECK_INTERVAL: Final = 10.0
"""Seconds between two rounds of checks (the active health checks' interval)."""


@define
class Dependencies:
    """Named dependency checks, their last results, the gauge and the JSON document."""

    checks: Sequence[DependencyCheck]
    registry: CollectorRegistry
    clock: IReactorTime
    interval: float = CHECK_INTERVAL
    #: Name -> None (up) or the reason it is down; missing before its first check.
    last: dict[str, str | None] = field(factory=dict, init=False)
    _up: Gauge = field(init=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._up = Gauge(
            "kraken_dependency_up",
            "1 when the component answered its last check, 0 when not, NaN before the first",
            ["dependency"],
            registry=self.registry,
        )
        for name, _ in self.checks:
            self._up.labels(name).set(math.nan)

    def check(self) -> Deferred[dict[str, str | None]]:
        """Run every check now; fire with name -> None (up) or the reason (down)."""
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> dict[str, str | None]:
        results = await DeferredList([check() for _, check in self.checks], consumeErrors=True)
        for (name, _), (ok, result) in zip(self.checks, results, strict=True):
            reason = None if ok else _reason(result.value)
            if reason != self.last.get(name, "") and name in self.last:
                if reason is None:
                    self.log.info("dependency {name} answers again", name=name)
                else:
                    self.log.warn("dependency {name} is down: {reason}", name=name, reason=reason)
            self.last[name] = reason
            self._up.labels(name).set(1.0 if reason is None else 0.0)
        return dict(self.last)

    def service(self) -> TimerService:
        """A service running :meth:`check` every ``interval`` seconds on ``clock``."""
        timer = TimerService(self.interval, self._check_quietly)  # type: ignore[no-untyped-call]
        timer.clock = self.clock
        return timer

    def _check_quietly(self) -> Deferred[None]:
        # A check never fails as a whole (DeferredList consumes the errors); a failure here
        # is a bug in a check, logged rather than stopping the timer.
        d = self.check()
        d.addErrback(lambda f: self.log.failure("dependency checks failed", f))
        return d.addCallback(lambda _: None)

    async def render(self) -> bytes:
        """``GET /dependencies``: a fresh round, as JSON (always 200: it is information)."""
        results = await self.check()
        document = {
            "dependencies": {
                name: {"up": reason is None, "reason": reason}
                for name, reason in sorted(results.items())
            }
        }
        return json.dumps(document, indent=2).encode() + b"\n"


def _reason(error: BaseException) -> str:
    if isinstance(error, CancelledError):
        return "check cancelled"
    return str(error) or type(error).__name__
