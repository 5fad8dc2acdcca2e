"""
README.md and docs/ stand alone and name what exists: no references to documents outside the
repository, and every Prometheus metric they name is one a daemon exposes.
"""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import kraken
from kraken.api.agent import AgentMetrics
from kraken.api.build_index import BuildIndexMetrics
from kraken.api.origin import OriginMetrics
from kraken.api.proxy import ProxyMetrics
from kraken.api.tracker import TrackerMetrics
from kraken.http.dependencies import Dependencies
from kraken.metrics import runtime_metrics
from kraken.persistedretry.metrics import PrometheusQueueMetrics
from kraken.protocols.peer_metrics import PeerMetrics

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))
DOCS = [
    os.path.join(CHECKOUT, "README.md"),
    *sorted(glob.glob(os.path.join(CHECKOUT, "docs", "*.md"))),
]
#: A metric name in backticks, labels left out: `kraken_agent_downloads_total{result}`.
METRIC = re.compile(r"`(kraken_[a-z0-9_]+)")
#: What points outside the repository: the design notes and reference pages the project was
#: built from are not part of it.
OUTSIDE = re.compile(r"DESIGN|\bshared/|\breference/")


def read(path: str) -> str:
    """The text of ``path``."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def exposed_names() -> set[str]:
    """Every metric name a scrape of some daemon's ``/metrics`` can show."""
    registries = [
        metrics().registry
        for metrics in (
            AgentMetrics,
            BuildIndexMetrics,
            OriginMetrics,
            ProxyMetrics,
            TrackerMetrics,
            PeerMetrics,
        )
    ]
    for queue in ("origin_writeback", "build_index_replication"):
        registry = CollectorRegistry()
        PrometheusQueueMetrics(queue, registry)
        registries.append(registry)
    registry = CollectorRegistry()
    Dependencies((), registry, Clock())
    runtime_metrics(Clock(), registry)
    registries.append(registry)
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


class StandaloneDocsTests(SynchronousTestCase):
    """What README.md and docs/*.md say about the project."""

    def test_no_outside_references(self) -> None:
        """No page refers to DESIGN.md, shared/ or reference/, which readers do not have."""
        found = [
            f"{os.path.relpath(path, CHECKOUT)}:{number}: {line.strip()[:80]}"
            for path in DOCS
            for number, line in enumerate(read(path).splitlines(), 1)
            if OUTSIDE.search(line)
        ]
        self.assertEqual(found, [])

    def test_metric_names_exist(self) -> None:
        """Every `kraken_*` metric the docs name is exposed as named (counters end in _total)."""
        exposed = exposed_names()
        self.assertIn("kraken_agent_downloads_total", exposed)  # the collection works
        named = {
            (os.path.relpath(path, CHECKOUT), name)
            for path in DOCS
            for name in METRIC.findall(read(path))
        }
        self.assertGreater(len(named), 20)
        self.assertEqual(sorted(f"{p}: {n}" for p, n in named if n not in exposed), [])
