"""Benchmarks: swarms, registry throughput, tracker load, simulation at scale."""
