"""Storage backends behind IBackend, and namespace routing."""
