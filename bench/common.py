"""
What every benchmark's command line and measurements share.

Sizes, rates and durations are parsed by :mod:`kraken.config.values`, the parsers the
daemons' YAML uses (``64MiB``, ``500kB``, ``4MiB/s``, ``10ms``, a plain number), wrapped so
that a bad value is an ``argparse`` usage error.  :func:`process_cpu_seconds` reads another
process's CPU time from ``/proc``, :func:`tcp_segments` the TCP counters of the network
namespace a process runs in.
"""

from __future__ import annotations

import argparse
import os

from kraken.config.values import InvalidValue, parse_duration, parse_rate

__all__ = ["parse_seconds", "parse_size", "parse_tcp_snmp", "process_cpu_seconds", "tcp_segments"]


def parse_size(text: str) -> int:
    """``64MiB``, ``500kB``, ``4MiB/s`` (a rate), ``1048576`` -> bytes (argparse ``type``)."""
    try:
        return parse_rate(text)
    except InvalidValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_seconds(text: str | float) -> float:
    """``10ms``, ``250us``, ``3s``, ``0.5`` -> seconds (argparse ``type``)."""
    try:
        return parse_duration(text)
    except InvalidValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_tcp_snmp(text: str) -> dict[str, int]:
    """The ``Tcp:`` counters of a ``/proc/net/snmp`` text, by name (its header line names them)."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("no Tcp: header and value lines in /proc/net/snmp")
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


def tcp_segments(pid: int) -> tuple[int, int]:
    """
    (segments sent, segments retransmitted) so far in the network namespace of process
    ``pid`` (``/proc/<pid>/net/snmp`` shows the counters of the process's namespace; (0, 0)
    when the process is gone).
    """
    try:
        with open(f"/proc/{pid}/net/snmp") as f:
            counters = parse_tcp_snmp(f.read())
    except OSError:
        return (0, 0)
    return (counters["OutSegs"], counters["RetransSegs"])
