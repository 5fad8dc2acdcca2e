"""The sans-IO P2P engine: no Twisted imports, no I/O."""
