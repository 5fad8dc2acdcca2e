"""Tests for kraken.backends.noop: the abstract suite, and that uploads are accepted."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.interface import BlobNotFound, IBackend, ListResult
from kraken.backends.noop import NoopBackend
from tests.backends.base import NAMESPACE, BackendTests, RunSynchronously, blob_name


class NoopBackendTests(RunSynchronously, BackendTests, SynchronousTestCase):
    """The noop backend passes the read-side suite and swallows uploads."""

    def make_backend(self) -> IBackend:
        """A NoopBackend."""
        return NoopBackend()

    def test_upload_succeeds_and_keeps_nothing(self) -> None:
        """Upload fires with None, yet the name is still not found and nothing is listed."""
        backend = NoopBackend()
        name = blob_name("noop")
        self.assertIsNone(self.successResultOf(backend.upload(NAMESPACE, name, b"data")))
        self.failureResultOf(backend.stat(NAMESPACE, name), BlobNotFound)
        self.assertEqual(self.successResultOf(backend.list("")), ListResult((), None))
        self.failureResultOf(backend.delete(NAMESPACE, name), BlobNotFound)
