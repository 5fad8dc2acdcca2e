"""Tests for kraken.backends."""
