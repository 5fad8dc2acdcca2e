"""
The replicator when the origin stops: a push cancelled at any step ends quietly, and the
reader it opened (or opens later, in its thread) is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.cluster import Membership, NoHealthFilter, RendezvousRing, StaticHostList
from kraken.core import Digest, PieceLengthTable
from kraken.io.runner import run_inline
from kraken.origin.replication import Replicator
from kraken.store import BlobStore

PIECES = PieceLengthTable(((0, 1024),))
SELF = "o1:15002"
OTHER = "o2:15002"


class HeldRunner:
    """A runner that holds each call until the test releases it, as a busy thread pool would."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((function, args, d))
        return d

    def release(self) -> None:
        """Run every held call now, in order, and fire its Deferred (also calls held meanwhile)."""
        while self.held:
            function, args, d = self.held.pop(0)
            d.callback(function(*args))


class UploadNeverEnds:
    """An origin client whose uploads hang until cancelled (a replica that does not answer)."""

    def __init__(self) -> None:
        self.uploads: list[Deferred[bool]] = []

    def upload(self, *args: Any, **kwargs: Any) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.uploads.append(d)
        return d


class CancelledPushTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = BlobStore(self.mktemp(), Clock())
        data = b"x" * 3000
        self.digest = Digest.of_bytes(data)
        self.store.put_bytes(data, PIECES)
        membership = Membership(StaticHostList([SELF, OTHER]), NoHealthFilter(), Clock())
        membership.refresh()
        self.ring = RendezvousRing(membership)

    def replicator(self, blocking: Any, client: Any) -> Replicator:
        return Replicator(client, self.ring, SELF, self.store, blocking)

    def test_cancel_while_opening(self) -> None:
        """Cancelled before its reader opened: no error logged, the late reader closed."""
        runner = HeldRunner()
        d = self.replicator(runner, UploadNeverEnds()).duplicate("ns", self.digest)
        d.cancel()
        self.successResultOf(d)
        runner.release()  # the thread's open_reader finishes after the cancel, then its close
        self.assertEqual(self.store.open_readers(self.digest), 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_while_uploading(self) -> None:
        """Cancelled mid-upload: no error logged, the reader closed."""
        client = UploadNeverEnds()
        d = self.replicator(run_inline, client).replicate("ns", self.digest)
        self.assertEqual(len(client.uploads), 1)
        self.assertEqual(self.store.open_readers(self.digest), 1)
        d.cancel()
        self.successResultOf(d)
        self.assertEqual(self.store.open_readers(self.digest), 0)
        self.assertEqual(self.flushLoggedErrors(), [])
