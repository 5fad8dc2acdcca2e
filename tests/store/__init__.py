"""Tests for kraken.store."""
