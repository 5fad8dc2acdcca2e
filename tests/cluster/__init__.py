"""Tests for kraken.cluster."""
