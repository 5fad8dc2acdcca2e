"""Tests for mutual TLS between components (kraken.tls) and the development CA (kraken.certs)."""
