"""Hash rings, host lists and health checks."""
