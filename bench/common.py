"""
What every benchmark's command line and measurements share.

Sizes, rates and durations are parsed by :mod:`kraken.config.values`, the parsers the
daemons' YAML uses (``64MiB``, ``500kB``, ``4MiB/s``, ``10ms``, a plain number), wrapped so
that a bad value is an ``argparse`` usage error.  :func:`process_cpu_seconds` reads another
process's CPU time from ``/proc``.
"""

from __future__ import annotations

import argparse
import os

from kraken.config.values import InvalidValue, parse_duration, parse_rate

__all__ = ["parse_seconds", "parse_size", "process_cpu_seconds"]


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
