"""Tests for :mod:`kraken.api`: the Klein applications of every daemon."""
