"""Tests for kraken.http."""
