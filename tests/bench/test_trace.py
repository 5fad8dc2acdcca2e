"""Tests of bench.trace: bridge-port counters, CPU ticks and the per-step rates."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from bench.trace import Sample, cpu_ticks, per_second, port_counters, summarize


def _link(name: str, tx: int, rx: int) -> dict[str, object]:
    return {"ifname": name, "stats64": {"tx": {"bytes": tx}, "rx": {"bytes": rx}}}


class CounterTests(SynchronousTestCase):
    def test_ports_are_hosts_seen_from_the_bridge(self) -> None:
        """A port transmits what its host receives; the bridge and lo are not hosts."""
        out = json.dumps(
            [_link("lo", 1, 1), _link("br0", 5, 5), _link("v-a0", 100, 7), {"ifname": "v-x"}]
        )
        self.assertEqual(port_counters(out), {"a0": (100, 7)})
        self.assertEqual(port_counters(""), {})

    def test_cpu_ticks_leave_idle_and_iowait_out(self) -> None:
        stat = "cpu  10 1 5 80 4 0 2 0 3 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n"
        self.assertEqual(cpu_ticks(stat), (18, 102))


class SummaryTests(SynchronousTestCase):
    def test_rates_per_group(self) -> None:
        samples = [
            Sample(10.0, {"a0": (0, 0), "a1": (0, 0), "o0": (0, 0)}, 0, 0),
            Sample(10.5, {"a0": (1000, 500), "a1": (3000, 0), "o0": (0, 2000)}, 50, 100),
        ]
        (step,) = summarize(samples, 10.0, {"agents": ["a0", "a1"], "origins": ["o0"]})
        self.assertEqual(
            step,
            {
                "t": 0.5,
                "agents_rx": 8000,
                "agents_tx": 1000,
                "agents_rx_min": 2000,
                "origins_rx": 0,
                "origins_tx": 4000,
                "origins_rx_min": 0,
                "cpu": 0.5,
            },
        )

    def test_host_missing_from_a_sample_is_left_out(self) -> None:
        samples = [
            Sample(0.0, {"a0": (0, 0)}, 0, 0),
            Sample(1.0, {"a0": (10, 0), "a1": (9, 9)}, 0, 0),
        ]
        (step,) = summarize(samples, 0.0, {"agents": ["a0", "a1"]})
        self.assertEqual((step["agents_rx"], step["cpu"]), (10, 0.0))

    def test_per_second_means(self) -> None:
        steps = [{"t": 0.5, "x": 2}, {"t": 1.0, "x": 4}, {"t": 1.5, "x": 6}, {"t": 3.2, "x": 1}]
        self.assertEqual(per_second(steps, "x", 3.5), [3.0, 6.0, 0.0, 1.0])
