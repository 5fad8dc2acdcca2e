"""
kraken.core.names: the one namespace rule, and the backends' check agreeing with it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.interface import InvalidName
from kraken.backends.names import check_namespace as backend_check
from kraken.core.names import MAX_NAMESPACE_LENGTH, InvalidNamespace, check_namespace

GOOD = ["library/alpine", "a", "library/alpine:3.19", "__noop__", "x" * MAX_NAMESPACE_LENGTH]
BAD = ["", "a b", "caf\u00e9", "a\nb", "..", "a/../b", "/abs", "a//b", "a/", "x" * 513, "a\tb"]


class NamespaceRuleTests(SynchronousTestCase):
    """One rule: 1..512 printable ASCII without spaces, no empty, '.' or '..' component."""

    def test_good(self) -> None:
        """Repositories, whole tags and bookkeeping names are namespaces."""
        for name in GOOD:
            self.assertEqual(check_namespace(name), name)
            self.assertEqual(backend_check(name), name)

    def test_bad(self) -> None:
        """Spaces, non-ASCII, control characters, traversal and overlong names are refused
        by the API check and by the backends alike (the drift issue 20 found)."""
        for name in BAD:
            self.assertRaises(InvalidNamespace, check_namespace, name)
            self.assertRaises(InvalidName, backend_check, name)

    @given(st.text(max_size=40))
    def test_backends_agree(self, name: str) -> None:
        """For any text, the backends accept exactly what the API check accepts."""
        try:
            check_namespace(name)
            api_ok = True
        except InvalidNamespace:
            api_ok = False
        try:
            backend_check(name)
            backend_ok = True
        except InvalidName:
            backend_ok = False
        self.assertEqual(api_ok, backend_ok)
