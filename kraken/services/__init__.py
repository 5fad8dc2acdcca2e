"""One module per daemon: makeService(options, reactor) -> MultiService."""
