"""Tests for kraken.persistedretry: task values, the stores and the retry queue."""
