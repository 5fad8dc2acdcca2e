"""Tests for :mod:`kraken.services`: each daemon's service tree, built from its options."""
