"""
How blocking calls leave the reactor thread: a :class:`BlockingRunner` passed in by whoever
builds the object that needs one (backends, stores' callers, the peer driver, HTTP APIs).

In a daemon the runner is :func:`threadpool_runner` over a ``ThreadPool`` the service owns; in
unit tests and in-memory swarms it is :func:`run_inline`, which calls the function at once on
the calling thread so that a ``SynchronousTestCase`` sees the result without a reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

__all__ = ["BlockingRunner", "run_inline", "threadpool_runner"]
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_P = ParamSpec("_P")
_T = TypeVar("_T")


class BlockingRunner(Protocol):
    """Runs a blocking callable somewhere off the reactor thread; the Deferred fires on it."""

    def __call__(
        self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """Call ``function(*args, **kwargs)`` and fire with its result or failure."""


def threadpool_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> BlockingRunner:
    """A runner that uses ``pool`` and fires its Deferreds in ``reactor``'s thread."""

    def run(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return deferToThreadPool(reactor, pool, function, *args, **kwargs)

    return run


def run_inline(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
    """Call ``function`` now, on this thread (for tests): a runner that never defers."""
    try:
        result = function(*args, **kwargs)
    except Exception:
        return fail()
    return succeed(result)
