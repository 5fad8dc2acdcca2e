"""
The I/O building blocks every daemon shares (see docs/architecture.md, "The io room").

* :mod:`kraken.io.runner`: :class:`BlockingRunner`, the one way blocking work (file I/O,
  hashing, boto3) leaves the reactor thread: :func:`threadpool_runner` in daemons,
  :func:`run_inline` in tests and in-memory swarms.
* :mod:`kraken.io.singleflight`: :class:`SingleFlight`, concurrent requests for the same key
  sharing one piece of work.
* :mod:`kraken.io.reactor`: :class:`~kraken.io.reactor.IClientReactor` and
  :class:`~kraken.io.reactor.IDaemonReactor`, what a part uses of its reactor when that is
  more than one of Twisted's interfaces.

* :mod:`kraken.io.sendfile`: sending a region of an open file to a connection, the same way
  for HTTP blob responses (:mod:`kraken.api.serving`) and peer pieces
  (:mod:`kraken.protocols.peer`): :class:`~kraken.io.sendfile.SendfileProducer`
  (``os.sendfile`` on plain TCP) and its threaded-read fallback
  :class:`~kraken.io.sendfile.ThreadedReadProducer` (TLS, in-memory transports).  Not
  imported here, so that ``import kraken.io`` does not load the TLS layer.

Ranges live with :mod:`kraken.http.ranges`; names with :mod:`kraken.core.names`.
"""

from kraken.io.runner import BlockingRunner, run_inline, threadpool_runner
from kraken.io.singleflight import SingleFlight

__all__ = ["BlockingRunner", "SingleFlight", "run_inline", "threadpool_runner"]
