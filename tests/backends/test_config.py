"""Tests for kraken.backends.config: parsing backend routes and building the router."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.config import DEFAULT_FS_ROOT, BackendContext, BackendsConfig
from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import NamespaceNotFound
from kraken.backends.noop import NoopBackend
from kraken.config import BackendEntry, ConfigError
from kraken.config.backends import BackendChoice, FilesystemOptions, NoopOptions
from kraken.io.runner import run_inline


def entry(namespace: str, **kind: Any) -> BackendEntry:
    """A backends entry routing ``namespace`` to the one backend in ``kind``."""
    return BackendEntry(namespace=namespace, backend=BackendChoice(**kind))


class BackendsConfigParseTests(SynchronousTestCase):
    """BackendsConfig.from_list reads Go Kraken's backends: list with the config parser."""

    def assert_error(self, raw: Any, path: str, words: str) -> None:
        """Parsing ``raw`` fails with one ConfigError line at ``path`` mentioning ``words``."""
        with self.assertRaises(ConfigError) as raised:
            BackendsConfig.from_list(raw)
        (problem,) = raised.exception.problems
        self.assertTrue(problem.startswith(f"{path}: "), problem)
        self.assertIn(words, problem)

    def test_default(self) -> None:
        """No backends: key means one fs backend under ./kraken-data for every namespace."""
        self.assertEqual(
            BackendsConfig.from_list(None),
            BackendsConfig((entry(".*", fs=FilesystemOptions(root=DEFAULT_FS_ROOT)),)),
        )
        self.assertEqual(DEFAULT_FS_ROOT, "./kraken-data/backend")

    def test_routes_in_order(self) -> None:
        """Each entry becomes a route, in the order given; ``noop: null`` means noop."""
        config = BackendsConfig.from_list(
            [
                {"namespace": "^library/", "backend": {"fs": {"root": "/srv/lib"}}},
                {"namespace": ".*", "backend": {"noop": None}},
            ]
        )
        self.assertEqual(
            config.entries,
            (
                entry("^library/", fs=FilesystemOptions(root="/srv/lib")),
                entry(".*", noop=NoopOptions()),
            ),
        )

    def test_errors_name_the_key(self) -> None:
        """Each mistake is reported at its key path."""
        self.assert_error({"namespace": ".*"}, "backends", "expected a list")
        self.assert_error(["x"], "backends[0]", "expected a mapping")
        self.assert_error([{"backend": {"noop": {}}}], "backends[0].namespace", "missing")
        self.assert_error(
            [{"namespace": 3, "backend": {"noop": {}}}], "backends[0].namespace", "regular"
        )
        self.assert_error(
            [{"namespace": "(", "backend": {"noop": {}}}], "backends[0].namespace", '"("'
        )
        self.assert_error([{"namespace": ".*"}], "backends[0].backend", "required")
        self.assert_error(
            [{"namespace": ".*", "backend": {"fs": {}, "noop": {}}}],
            "backends[0].backend",
            "exactly one",
        )
        self.assert_error(
            [{"namespace": ".*", "backend": {"gcs": {}}}], "backends[0].backend.gcs", "unknown"
        )
        self.assert_error(
            [{"namespace": ".*", "backend": {"fs": {"root": ""}}}],
            "backends[0].backend.fs.root",
            "expected a path",
        )
        self.assert_error(
            [{"namespace": ".*", "backend": {"fs": {"rot": "/x"}}}],
            "backends[0].backend.fs.rot",
            "unknown key",
        )
        self.assert_error(
            [{"namespace": ".*", "backend": {"noop": {}}, "bandwidth": {}}],
            "backends[0].bandwidth",
            "unknown key",
        )
        self.assert_error(
            [{"namespace": ".*", "backend": {"noop": {}}}, {"namespace": "x", "backend": {}}],
            "backends[1].backend",
            "exactly one",
        )

    def test_root_of_key_paths(self) -> None:
        """The key paths start at the root given (the daemon's name)."""
        with self.assertRaises(ConfigError) as raised:
            BackendsConfig.from_list(
                [{"namespace": ".*", "backend": {"fs": {"rooot": "/x"}}}], "origin"
            )
        self.assertEqual(
            raised.exception.problems,
            ('origin.backends[0].backend.fs.rooot: unknown key (did you mean "root"?)',),
        )


class BackendsConfigBuildTests(SynchronousTestCase):
    """BackendsConfig.build makes the backends and the router over them."""

    def test_build(self) -> None:
        """Routes map to built backends; identical configs share one backend instance."""
        root = self.mktemp()
        config = BackendsConfig(
            (
                entry("^a/", fs=FilesystemOptions(root=root)),
                entry("^b/", noop=NoopOptions()),
                entry("^c/", fs=FilesystemOptions(root=root)),
            )
        )
        router = config.build(BackendContext(Clock(), run_inline))
        a = router.backend_for("a/x")
        self.assertIsInstance(a, FilesystemBackend)
        assert isinstance(a, FilesystemBackend)
        self.assertEqual(a.root, os.path.abspath(root))
        self.assertIs(router.backend_for("c/x"), a)
        self.assertIsInstance(router.backend_for("b/x"), NoopBackend)
        self.assertRaises(NamespaceNotFound, router.backend_for, "d/x")

    def test_for_reactor(self) -> None:
        """BackendContext.for_reactor runs blocking calls in the reactor's thread pool."""
        pools: list[object] = []

        class FakeReactor:
            def getThreadPool(self) -> object:
                pools.append("asked")
                return object()

        context = BackendContext.for_reactor(FakeReactor())
        self.assertEqual(pools, ["asked"])
        self.assertTrue(callable(context.run))
