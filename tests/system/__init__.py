"""Multi-process and multi-host system tests."""
