"""
A timeline of a swarm run: what every host received and sent, and how busy the CPU was.

:class:`Trace` samples, every ``interval`` seconds from a thread of the benchmark, the
counters of every bridge port (``ip -s -j link show`` in the bridge's namespace: a port
``v-<host>`` *transmits* what ``<host>`` receives and *receives* what it sends, Ethernet
headers included, which is what the ``tc`` limits count) and the machine's ``/proc/stat``.
:func:`summarize` turns the samples into rates per step, grouped into agents and origins,
and the machine's busy fraction; ``bench.swarm`` stores them in its JSON and prints the
agents' received rate and the CPU per second.  That is how the time of a run is accounted
for: how long the swarm took to reach its rate, what fraction of the download links it used
meanwhile, and how the last seconds went.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from attrs import define, field, frozen

__all__ = ["Sample", "Trace", "cpu_ticks", "per_second", "port_counters", "summarize"]

#: Bridge ports are named ``v-<host>`` (bench.netns).
PORT_PREFIX: Final = "v-"


@frozen
class Sample:
    """Counters at one moment: per host (received, sent) bytes; CPU (busy, total) ticks."""

    at: float
    hosts: dict[str, tuple[int, int]]
    busy: int
    total: int


def port_counters(ip_json: str) -> dict[str, tuple[int, int]]:
    """Per host, (bytes it received, bytes it sent), from ``ip -s -j link show`` of the bridge."""
    out: dict[str, tuple[int, int]] = {}
    for link in json.loads(ip_json or "[]"):
        name = link.get("ifname", "")
        stats = link.get("stats64")
        if not name.startswith(PORT_PREFIX) or stats is None:
            continue
        out[name.removeprefix(PORT_PREFIX)] = (int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"]))
    return out


def cpu_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``'s first line (idle + iowait idle)."""
    values = [int(v) for v in proc_stat.split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user
    return total - values[3] - values[4], total


def _read_proc_stat() -> str:
    with open("/proc/stat") as f:
        return f.read()


@define
class Trace:
    """Samples the bridge's ports and the CPU every ``interval`` seconds until :meth:`stop`."""

    bridge_ns: str
    interval: float = 0.25
    clock: Callable[[], float] = time.time
    samples: list[Sample] = field(factory=list, init=False)
    _stop: threading.Event = field(factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def sample(self) -> Sample:
        """One sample now."""
        out = subprocess.run(
            ["ip", "-n", self.bridge_ns, "-s", "-j", "link", "show"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        busy, total = cpu_ticks(_read_proc_stat())
        return Sample(self.clock(), port_counters(out), busy, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Begin sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="swarm-trace", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop sampling; the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples


def summarize(
    samples: Sequence[Sample], start: float, groups: dict[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """
    Per step between samples: ``t`` (its end, seconds after ``start``), for each group
    ``<group>_rx`` / ``<group>_tx`` (bytes per second its hosts received / sent together,
    hosts missing from either sample left out), ``<group>_rx_min`` (the least any one host
    received) and ``cpu`` (the machine's busy fraction).
    """
    steps: list[dict[str, Any]] = []
    for before, after in itertools.pairwise(samples):
        seconds = after.at - before.at
        if seconds <= 0:
            continue
        step: dict[str, Any] = {"t": round(after.at - start, 3)}
        for group, hosts in groups.items():
            rates = [
                (
                    (after.hosts[h][0] - before.hosts[h][0]) / seconds,
                    (after.hosts[h][1] - before.hosts[h][1]) / seconds,
                )
                for h in hosts
                if h in before.hosts and h in after.hosts
            ]
            step[f"{group}_rx"] = round(sum(r for r, _ in rates))
            step[f"{group}_tx"] = round(sum(t for _, t in rates))
            step[f"{group}_rx_min"] = round(min((r for r, _ in rates), default=0))
        ticks = after.total - before.total
        step["cpu"] = round((after.busy - before.busy) / ticks, 3) if ticks > 0 else 0.0
        steps.append(step)
    return steps


def per_second(steps: Sequence[dict[str, Any]], key: str, until: float) -> list[float]:
    """For each whole second from 0 to ``until``: the mean ``key`` of the steps ending in it."""
    out: list[float] = []
    for second in range(math.ceil(until)):
        inside = [s[key] for s in steps if second < s["t"] <= second + 1]
        out.append(statistics.fmean(inside) if inside else 0.0)
    return out
