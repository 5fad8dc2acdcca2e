"""Tests for kraken.protocols."""
