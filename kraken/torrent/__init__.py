"""
The sans-IO P2P engine: no Twisted imports, no I/O.

:class:`~kraken.torrent.scheduler.Scheduler` takes events as method calls and
returns :mod:`~kraken.torrent.actions`; :mod:`kraken.protocols.peer` drives it
on a reactor, tests and the simulator drive it directly.
"""
