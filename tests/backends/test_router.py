"""Tests for kraken.backends.router: namespace regex routing."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.interface import BlobInfo, InvalidName, NamespaceNotFound
from kraken.backends.noop import NoopBackend
from kraken.backends.router import READINESS_NAME, BackendRouter


class RecordingBackend(NoopBackend):
    """A noop backend with a label, counting stat and close calls."""

    def __init__(self, label: str, stat_result: Deferred[BlobInfo] | None = None) -> None:
        self.label = label
        self.stats: list[tuple[str, str]] = []
        self.closed = 0
        self.stat_result = stat_result

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """Record the call; answer stat_result if set, else not found."""
        self.stats.append((namespace, name))
        return self.stat_result if self.stat_result is not None else super().stat(namespace, name)

    def close(self) -> Deferred[None]:
        """Count the call."""
        self.closed += 1
        return succeed(None)

    def __repr__(self) -> str:
        return f"<RecordingBackend {self.label}>"


class BackendRouterTests(SynchronousTestCase):
    """BackendRouter picks the first route whose regex matches anywhere in the namespace."""

    def setUp(self) -> None:
        """Three backends: library, anything with 'team', everything."""
        self.library = RecordingBackend("library")
        self.team = RecordingBackend("team")
        self.default = RecordingBackend("default")
        self.router = BackendRouter(
            [("^library/", self.library), ("team", self.team), (".*", self.default)]
        )

    def test_first_match_wins(self) -> None:
        """A namespace matched by two routes goes to the earlier one."""
        self.assertIs(self.router.backend_for("library/team"), self.library)
        self.assertIs(self.router.backend_for("other"), self.default)

    def test_unanchored_search(self) -> None:
        """A regex matches anywhere in the namespace, as Go's MatchString does."""
        self.assertIs(self.router.backend_for("acme/team-x/app"), self.team)
        self.assertIs(self.router.backend_for("x/library/y"), self.default)

    def test_no_match(self) -> None:
        """No matching route raises NamespaceNotFound naming the namespace."""
        router = BackendRouter([("^library/", self.library)])
        with self.assertRaises(NamespaceNotFound) as raised:
            router.backend_for("private/app")
        self.assertIn("'private/app'", str(raised.exception))
        self.assertEqual(raised.exception.namespace, "private/app")

    def test_noop_namespace(self) -> None:
        """__noop__ goes to the noop backend even when another route would match it."""
        noop = RecordingBackend("noop")
        router = BackendRouter([(".*", self.default)], noop=noop)
        self.assertIs(router.backend_for("__noop__"), noop)
        self.assertIsInstance(BackendRouter([]).backend_for("__noop__"), NoopBackend)

    def test_invalid_namespace(self) -> None:
        """A malformed namespace raises InvalidName rather than being routed."""
        self.assertRaises(InvalidName, self.router.backend_for, "a b")

    def test_compiled_patterns(self) -> None:
        """Routes accept precompiled regexes."""
        router = BackendRouter([(re.compile("^x", re.IGNORECASE), self.library)])
        self.assertIs(router.backend_for("XYZ"), self.library)

    def test_bad_regex(self) -> None:
        """A bad regex fails at construction with the regex named."""
        with self.assertRaises(ValueError) as raised:
            BackendRouter([("(unclosed", self.library)])
        self.assertIn("'(unclosed'", str(raised.exception))

    def test_backends_distinct(self) -> None:
        """backends() lists each backend once, routes first, noop last."""
        router = BackendRouter([("a", self.library), ("b", self.library), ("c", self.team)])
        backends = router.backends()
        self.assertEqual(backends[:2], (self.library, self.team))
        self.assertIsInstance(backends[2], NoopBackend)
        self.assertEqual(len(backends), 3)

    def test_close_closes_each_once(self) -> None:
        """close() closes every distinct backend exactly once."""
        router = BackendRouter([("a", self.library), ("b", self.library), ("c", self.team)])
        self.successResultOf(router.close())
        self.assertEqual((self.library.closed, self.team.closed), (1, 1))

    def test_close_survives_a_failure(self) -> None:
        """A backend whose close fails is logged and the others are still closed."""

        class Failing(RecordingBackend):
            def close(self) -> Deferred[None]:
                return fail(RuntimeError("boom"))

        router = BackendRouter([("a", Failing("bad")), ("b", self.team)])
        self.successResultOf(router.close())
        self.assertEqual(self.team.closed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_readiness_not_found_is_ready(self) -> None:
        """A backend that answers not-found for the probe name is ready."""
        self.successResultOf(self.router.check_readiness())
        self.assertEqual([n for _, n in self.default.stats], [READINESS_NAME])

    def test_readiness_found_is_ready(self) -> None:
        """A backend that has the probe name is ready too."""
        router = BackendRouter([(".*", RecordingBackend("x", succeed(BlobInfo(3))))])
        self.successResultOf(router.check_readiness())

    def test_readiness_error(self) -> None:
        """A backend that fails the probe makes readiness fail with its error."""
        broken = RecordingBackend("broken", fail(ConnectionRefusedError("down")))
        router = BackendRouter([("a", self.library), ("b", broken)])
        self.failureResultOf(router.check_readiness(), ConnectionRefusedError)
