"""Tests for kraken; the layout mirrors the package."""
