"""Tests for kraken.core."""
