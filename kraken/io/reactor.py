"""
What kraken's parts use of a reactor, named for the type checker.

Twisted splits the reactor into interfaces (``IReactorTime``, ``IReactorTCP``, ...) and types
each of its own APIs with the one it needs.  A part that uses several needs their
intersection, which Python's typing cannot spell, and a ``typing.Protocol`` listing the
methods would not do either: mypy-zope checks zope interfaces by name, so a protocol-typed
reactor could not be passed on to ``deferLater``, ``deferToThreadPool`` or a clock parameter.
These are therefore interfaces that extend the ones a part uses, as Twisted's own
``twisted.internet.reactor`` is typed (``twisted.internet._IReactorCommon``): a value of one
passes wherever one of its parents is asked for.

No reactor declares them.  A reactor becomes one where it enters kraken, through
:func:`daemon_reactor` (twistd's ``makeService``, :func:`kraken.embed.build`) or as the
argument of a command's ``react`` callback; every reactor Twisted ships for POSIX provides
all of their parents.  Parts that need one interface only take Twisted's own
(``IReactorTime`` for a clock, ``IReactorFromThreads`` for a runner, ``IReactorCore`` to stop).
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)

__all__ = ["IClientReactor", "IDaemonReactor", "daemon_reactor"]


class IClientReactor(IReactorTime, IReactorTCP, IReactorPluggableNameResolver):
    """
    Timers, TCP connections and host-name resolution: what a client of other hosts uses.

    The HTTP clients' connection pool (``Agent`` connects through ``HostnameEndpoint``), the
    Redis pool, and host lists that resolve a DNS name.
    """


class IDaemonReactor(IClientReactor, IReactorCore, IReactorThreads):
    """
    All a daemon uses: a client's, plus the reactor's life (stop, system events) and threads.

    Listeners are made by ``serverFromString``, whose endpoint may need more of the reactor
    than this says (``IReactorUNIX`` for ``unix:``, ``IReactorSSL`` for ``ssl:``).
    """


def daemon_reactor(reactor: IReactorCore | None = None) -> IDaemonReactor:
    """``reactor``, or the global reactor when it is None, as an :class:`IDaemonReactor`.

    Nothing is checked: tests pass a ``MemoryReactorClock`` that provides what the code
    under test touches, and Twisted types its global reactor without the thread and
    name-resolver interfaces it provides (see the module's docstring).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return cast(IDaemonReactor, reactor)
