"""
Metrics every daemon serves beside its own: the process, Python, and the reactor's lag.

Each daemon keeps its metrics in its own ``CollectorRegistry`` (several daemons share one
process in the herd or an embedding application), so the client library's default
``process_*`` and ``python_*`` collectors, which live in the global registry, are not on
their ``/metrics``: :func:`runtime_metrics` adds them to a daemon's registry.

``kraken_reactor_lag_seconds`` is how late a timer due every second last fired: the time
the reactor thread spent on something else (a blocking call, a long computation) instead of
serving.  It should stay at a few milliseconds; seconds mean every connection of the
process waited that long.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["LAG_INTERVAL", "ReactorLagMonitor", "runtime_metrics"]

LAG_INTERVAL: Final = 1.0
"""Seconds between two timers of :class:`ReactorLagMonitor`."""


class ReactorLagMonitor(Service):
    """Sets ``kraken_reactor_lag_seconds`` from a timer due every ``interval`` seconds."""

    def __init__(
        self, clock: IReactorTime, registry: CollectorRegistry, interval: float = LAG_INTERVAL
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.lag = Gauge(
            "kraken_reactor_lag_seconds",
            f"How late the last timer due every {interval:g} s fired (reactor thread busy)",
            registry=registry,
        )
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        """Start timing."""
        super().startService()  # type: ignore[no-untyped-call]
        self._schedule()

    def stopService(self) -> None:
        """Stop timing."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        self.lag.set(max(0.0, self.clock.seconds() - self._due))
        self._schedule()


def runtime_metrics(clock: IReactorTime, registry: CollectorRegistry) -> ReactorLagMonitor:
    """Add ``process_*`` and ``python_*`` to ``registry``; the reactor lag service to parent."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return ReactorLagMonitor(clock, registry)
