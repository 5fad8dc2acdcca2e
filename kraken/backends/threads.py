"""
How backends run blocking calls: :mod:`kraken.io.runner`, named here for the backends' imports.
"""

from kraken.io.runner import BlockingRunner, run_inline, threadpool_runner

__all__ = ["BlockingRunner", "run_inline", "threadpool_runner"]
