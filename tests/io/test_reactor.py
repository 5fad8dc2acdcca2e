"""
The reactor interfaces of :mod:`kraken.io.reactor` name what a real reactor provides.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorCore
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from kraken.io.reactor import IClientReactor, IDaemonReactor, daemon_reactor


def _parents(interface: InterfaceClass) -> set[InterfaceClass]:
    """Twisted's interfaces ``interface`` extends (itself and kraken's own left out)."""
    return {
        i
        for i in interface.__iro__
        if i is not Interface and not i.__module__.startswith("kraken.")
    }


class DaemonReactorTests(SynchronousTestCase):
    """:func:`daemon_reactor` casts without checking; these tests are the check."""

    def test_global_reactor_provides_every_parent(self) -> None:
        """The reactor twistd and embedding applications run provides all that
        IDaemonReactor (and so IClientReactor) extends: the cast names no interface it lacks."""
        reactor = daemon_reactor()
        parents = _parents(IDaemonReactor)
        self.assertTrue(_parents(IClientReactor) <= parents)
        self.assertIn(IReactorCore, parents)
        missing = sorted(i.__name__ for i in parents if not i.providedBy(reactor))
        self.assertEqual(missing, [])

    def test_given_reactor_is_used(self) -> None:
        """A reactor passed in is the one answered, unchanged."""
        reactor = object()
        self.assertIs(daemon_reactor(reactor), reactor)  # type: ignore[arg-type]
