"""Tests of bench/ (the simulator; the other benchmarks need root or real daemons)."""
