"""Tests of kraken.config."""
