"""Durable retry queues on SQLite."""
