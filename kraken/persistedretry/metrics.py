"""Metrics hooks for :class:`~kraken.persistedretry.queue.RetryQueue`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from zope.interface import implementer

from kraken.persistedretry.interfaces import IQueueMetrics


@implementer(IQueueMetrics)
class NullQueueMetrics:
    """Metrics hooks that record nothing (the default)."""

    def task_added(self, kind: str) -> None:
        """Ignore."""

    def attempt_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """Ignore."""

    def sizes(self, pending: int, in_flight: int) -> None:
        """Ignore."""


@implementer(IQueueMetrics)
class PrometheusQueueMetrics:
    """
    Prometheus metrics of one queue, named ``kraken_<queue>_...`` in ``registry``.

    ``queue`` names the queue in metric names (``"writeback"``, ``"tag_replication"``)
    so that two queues can share a registry.
    """

    def __init__(self, queue: str, registry: CollectorRegistry) -> None:
        """Register the metrics of queue ``queue``."""
        prefix = f"kraken_{queue}"
        self.added = Counter(
            f"{prefix}_tasks_added",
            "Tasks added (a duplicate add is not counted)",
            ["kind"],
            registry=registry,
        )
        self.attempts = Counter(
            f"{prefix}_attempts",
            "Finished attempts by outcome (success, failure, permanent)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            f"{prefix}_attempt_seconds",
            "Duration of attempts",
            ["kind"],
            registry=registry,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
        )
        self.pending = Gauge(
            f"{prefix}_pending_tasks", "Stored tasks not yet done", registry=registry
        )
        self.in_flight = Gauge(
            f"{prefix}_running_attempts", "Attempts running now", registry=registry
        )

    def task_added(self, kind: str) -> None:
        """Count a new task."""
        self.added.labels(kind=kind).inc()

    def attempt_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """Count the attempt and record its duration."""
        self.attempts.labels(kind=kind, outcome=outcome).inc()
        self.attempt_seconds.labels(kind=kind).observe(seconds)

    def sizes(self, pending: int, in_flight: int) -> None:
        """Set the two gauges."""
        self.pending.set(pending)
        self.in_flight.set(in_flight)
