"""Tests for kraken.backends.config: parsing backend routes and building the router."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.config import (
    DEFAULT_FS_ROOT,
    BackendConfigError,
    BackendContext,
    BackendRouteConfig,
    BackendsConfig,
    FilesystemBackendConfig,
    NoopBackendConfig,
)
from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import NamespaceNotFound
from kraken.backends.noop import NoopBackend
from kraken.backends.threads import run_inline


class BackendsConfigParseTests(SynchronousTestCase):
    """BackendsConfig.from_list reads Go Kraken's backends: list, strictly."""

    def assert_error(self, raw: Any, path: str, words: str) -> None:
        """Parsing ``raw`` fails with BackendConfigError at ``path`` mentioning ``words``."""
        with self.assertRaises(BackendConfigError) as raised:
            BackendsConfig.from_list(raw)
        self.assertEqual(raised.exception.path, path)
        self.assertTrue(str(raised.exception).startswith(f"{path}: "), str(raised.exception))
        self.assertIn(words, str(raised.exception))

    def test_default(self) -> None:
        """No backends: key means one fs backend under ./kraken-data for every namespace."""
        self.assertEqual(
            BackendsConfig.from_list(None),
            BackendsConfig((BackendRouteConfig(".*", FilesystemBackendConfig(DEFAULT_FS_ROOT)),)),
        )
        self.assertEqual(DEFAULT_FS_ROOT, "./kraken-data/backend")

    def test_routes_in_order(self) -> None:
        """Each entry becomes a route, in the order given."""
        config = BackendsConfig.from_list(
            [
                {"namespace": "^library/", "backend": {"fs": {"root": "/srv/lib"}}},
                {"namespace": ".*", "backend": {"noop": None}},
            ]
        )
        self.assertEqual(
            config.routes,
            (
                BackendRouteConfig("^library/", FilesystemBackendConfig("/srv/lib")),
                BackendRouteConfig(".*", NoopBackendConfig()),
            ),
        )

    def test_errors_name_the_key(self) -> None:
        """Each mistake is reported at its key path."""
        self.assert_error({"namespace": ".*"}, "backends", "expected a list")
        self.assert_error(["x"], "backends[0]", "expected a mapping")
        self.assert_error([{"backend": {"noop": {}}}], "backends[0].namespace", "missing")
        self.assert_error(
            [{"namespace": 3, "backend": {"noop": {}}}], "backends[0].namespace", "regex"
        )
        self.assert_error(
            [{"namespace": "(", "backend": {"noop": {}}}], "backends[0].namespace", "'('"
        )
        self.assert_error([{"namespace": ".*"}], "backends[0].backend", "exactly one")
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
            "non-empty string",
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


class BackendsConfigBuildTests(SynchronousTestCase):
    """BackendsConfig.build makes the backends and the router over them."""

    def test_build(self) -> None:
        """Routes map to built backends; identical configs share one backend instance."""
        root = self.mktemp()
        config = BackendsConfig(
            (
                BackendRouteConfig("^a/", FilesystemBackendConfig(root)),
                BackendRouteConfig("^b/", NoopBackendConfig()),
                BackendRouteConfig("^c/", FilesystemBackendConfig(root)),
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
