"""Shared HTTP pieces: the client factory and error mapping."""
