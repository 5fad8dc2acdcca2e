"""Tests for :mod:`kraken.peers`: peer stores (memory and a real Redis) and the handout policy."""
