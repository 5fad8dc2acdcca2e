"""Tests for kraken.torrent."""
