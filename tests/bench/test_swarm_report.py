"""Tests of bench.swarm's report of a finished run."""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import redirect_stdout
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.swarm import report


def _detail() -> dict[str, Any]:
    """The detail of a small finished run, shaped as ``run_benchmark`` builds it."""
    times = [17.0, 18.0, 19.5]
    summary = {
        "p50_ratio": 1.125,
        "p99_ratio": 1.219,
        "max_ratio": 1.219,
        "origin_egress_ratio": 1.5,
        "cpu_s_per_gb": 5.9,
        "tcp_p50_ratio": 1.05,
        "tcp_p99_ratio": 1.14,
    }
    return {
        "options": {"agents": 3, "origins": 2, "size": 64 * 1024**2, "rate": 4 * 1024**2},
        "bound_s": 16.0,
        "tcp_bound_s": 17.1,
        "tcp_reference": {"rx_rate": 3.75 * 1024**2, "retransmitted": 0.01},
        "times_s": times,
        "p50_s": 18.0,
        "p99_s": 19.5,
        "max_s": 19.5,
        "origin_tx_bytes": 96 * 1024**2,
        "cpu_s": 1.2,
        "cpu_s_by_daemon": {"agent-0": 0.4},
        "tcp_retransmitted": 0.02,
        "summary": summary,
        "timeline": [
            {"t": 0.5, "agents_rx": 1e6, "cpu": 0.5},
            {"t": 1.0, "agents_rx": 2e6, "cpu": 0.7},
        ],
    }


class ReportTests(SynchronousTestCase):
    def test_without_matplotlib(self) -> None:
        """
        Without matplotlib a finished run still prints its JSON line and writes its JSON file;
        the plot is skipped with a note instead of an ImportError that loses the run.
        """
        self.patch(sys, "modules", {**sys.modules, "matplotlib": None})
        out = self.mktemp()
        detail = _detail()
        printed = io.StringIO()
        with redirect_stdout(printed):
            report(detail, out)
        lines = printed.getvalue().splitlines()
        self.assertEqual(json.loads(lines[-2]), detail["summary"])
        self.assertIn("CDF not drawn: matplotlib is not installed", lines[-1])
        (written,) = os.listdir(out)
        self.assertTrue(written.endswith(".json"))
        with open(os.path.join(out, written)) as f:
            self.assertEqual(json.load(f)["summary"], detail["summary"])
