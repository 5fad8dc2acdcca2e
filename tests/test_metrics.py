"""
kraken.metrics: the process, Python and reactor-lag metrics on every daemon's /metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.io.runner import run_inline
from kraken.metrics import ReactorLagMonitor, runtime_metrics
from kraken.services.agent import build_agent
from kraken.services.build_index import build_build_index
from kraken.services.origin import build_origin
from kraken.services.proxy import build_proxy
from kraken.services.tracker import build_tracker


def lag(registry: CollectorRegistry) -> float | None:
    """The current ``kraken_reactor_lag_seconds``."""
    return registry.get_sample_value("kraken_reactor_lag_seconds")


class ReactorLagTests(SynchronousTestCase):
    """``kraken_reactor_lag_seconds`` measures how late a timer due every second fires."""

    def test_lag(self) -> None:
        """On time: 0; a reactor busy 1.5 s past the due time: 1.5; stopped: no timer left."""
        clock = Clock()
        registry = CollectorRegistry()
        monitor = ReactorLagMonitor(clock, registry)
        monitor.startService()
        clock.advance(1.0)
        self.assertEqual(lag(registry), 0.0)
        clock.advance(2.5)  # due at 2.0, the reactor gets to it at 3.5
        self.assertEqual(lag(registry), 1.5)
        clock.advance(1.0)
        self.assertEqual(lag(registry), 0.0)
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_process_metrics(self) -> None:
        """runtime_metrics puts process_* and python_* in the daemon's own registry."""
        registry = CollectorRegistry()
        runtime_metrics(Clock(), registry)
        text = generate_latest(registry).decode()
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "python_info",
            "python_gc_collections_total",
            "kraken_reactor_lag_seconds",
        ):
            self.assertIn(name, text)


class DaemonTreeTests(SynchronousTestCase):
    """Each daemon's tree serves the runtime metrics and runs the lag timer."""

    def registries(self) -> dict[str, Any]:
        """Each daemon, built on a memory reactor, and the registry its /metrics serves."""
        fake = MemoryReactorClock()
        off = {"cleanup": {"enabled": False}}
        origin = build_origin(
            parse_config("origin", {"data_dir": self.mktemp()}), fake, run=run_inline
        )
        tracker = build_tracker(parse_config("tracker", {"data_dir": self.mktemp()}), fake)
        proxy = build_proxy(parse_config("proxy", {"data_dir": self.mktemp(), **off}), fake)
        agent = build_agent(parse_config("agent", {"data_dir": self.mktemp(), **off}), fake)
        build_index = build_build_index(
            parse_config("build-index", {"data_dir": self.mktemp()}), fake
        )
        return {
            "origin": (origin, origin.api.metrics.registry),
            "tracker": (tracker, tracker.api.metrics.registry),
            "proxy": (proxy, proxy.api.metrics.registry),
            "agent": (agent, agent.api.metrics.registry),
            "build-index": (build_index, build_index.api.metrics.registry),
        }

    def test_every_daemon(self) -> None:
        """process_* and the lag gauge are in each registry; the lag monitor is in each tree."""
        for name, (tree, registry) in self.registries().items():
            text = generate_latest(registry).decode()
            self.assertIn("process_cpu_seconds_total", text, name)
            self.assertIn("kraken_reactor_lag_seconds", text, name)
            self.assertEqual(len([s for s in tree if isinstance(s, ReactorLagMonitor)]), 1, name)
