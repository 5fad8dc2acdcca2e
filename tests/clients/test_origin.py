"""
The origin clients against in-memory origins: chunked uploads, 409 as success, failover
between replicas, polling 202s, 404s, stats that ask every replica, locations and peer
context.
"""

from __future__ import annotations

import random
from collections.abc import MutableSequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.clients.origin import (
    BlobNotFoundAtOrigin,
    NoOriginAvailable,
    OriginClient,
    OriginClusterClient,
    PollPolicy,
    StatInconclusive,
    bytes_chunks,
)
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RetryPolicy
from kraken.http.testing import HostRoutingAgent
from tests.origin.harness import BackendDown, MemoryBackend, make_origin

BLOB = bytes(range(256)) * 40
DIGEST = Digest.of_bytes(BLOB)
NS = "lib/x"
MEMBERS = ("o1:15002", "o2:15002", "o3:15002")


class RingTestCase(SynchronousTestCase):
    """Three in-memory origins sharing one backend, reached through a HostRoutingAgent."""

    def setUp(self) -> None:
        """Build the ring and a client over it."""
        self.clock = Clock()
        self.agent = HostRoutingAgent()
        self.backend = MemoryBackend()
        self.origins = {
            m: make_origin(
                self, self.clock, address=m, members=MEMBERS, backend=self.backend, agent=self.agent
            )
            for m in MEMBERS
        }
        factory = HTTPClientFactory(self.clock, agent=self.agent, retry=RetryPolicy(max_retries=0))
        self.client = OriginClient(
            factory.client(), self.clock, chunk_size=3000, poll=PollPolicy(initial=1.0)
        )
        self.cluster = OriginClusterClient(self.client, lambda: list(MEMBERS))


class OriginClusterClientTests(RingTestCase):
    """Uploads, downloads, locations and the single-origin calls."""

    def test_locations_in_ring_order(self) -> None:
        """Locations are the ring's ranking of the three members."""
        found = self.successResultOf(self.cluster.locations(DIGEST))
        ring = self.origins[MEMBERS[0]].api.ring
        self.assertEqual(found, ring.locations(DIGEST))
        self.assertEqual(sorted(found), sorted(MEMBERS))

    def test_upload_chunks_and_replicates(self) -> None:
        """The owner receives the upload in chunks and duplicates it to both other replicas."""
        progress: list[int] = []
        stored = self.successResultOf(
            self.cluster.upload_blob(
                NS, DIGEST, len(BLOB), bytes_chunks(BLOB), progress=progress.append
            )
        )
        self.assertTrue(stored)
        self.assertEqual(progress, [3000, 6000, 9000, 10240])
        self.assertTrue(all(o.store.has(DIGEST) for o in self.origins.values()))
        self.assertEqual(self.backend.blobs[DIGEST.hex], BLOB)
        again = self.successResultOf(
            self.cluster.upload_blob(NS, DIGEST, len(BLOB), bytes_chunks(BLOB))
        )
        self.assertFalse(again)

    def test_upload_fails_over_when_owner_is_down(self) -> None:
        """With the owner refusing connections the next replica takes the upload."""
        owner = self.successResultOf(self.cluster.locations(DIGEST))[0]
        self.agent.remove(owner)
        self.cluster = OriginClusterClient(self.client, lambda: [m for m in MEMBERS if m != owner])
        self.assertTrue(
            self.successResultOf(
                self.cluster.upload_blob(NS, DIGEST, len(BLOB), bytes_chunks(BLOB))
            )
        )
        self.assertFalse(self.origins[owner].store.has(DIGEST))
        self.flushLoggedErrors()

    def test_download_polls_202_then_streams(self) -> None:
        """A blob only in the backend: the client polls the 202s, then gets the bytes."""
        self.backend.blobs[DIGEST.hex] = BLOB
        self.backend.hold = Deferred()
        chunks: list[bytes] = []
        d = self.cluster.download_blob(NS, DIGEST, chunks.append)
        self.assertNoResult(d)
        self.backend.hold.callback(None)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), len(BLOB))
        self.assertEqual(b"".join(chunks), BLOB)
        # The owner fetched once and copied the blob to the others.
        self.assertEqual(self.backend.downloads, 1)
        self.assertTrue(all(o.store.has(DIGEST) for o in self.origins.values()))

    def test_download_unknown_is_not_found(self) -> None:
        """A blob nowhere fails with BlobNotFoundAtOrigin at once."""
        self.failureResultOf(
            self.cluster.download_blob(NS, DIGEST, lambda _: None), BlobNotFoundAtOrigin
        )

    def test_download_fails_over(self) -> None:
        """An unreachable first replica is skipped."""
        self.successResultOf(self.cluster.upload_blob(NS, DIGEST, len(BLOB), bytes_chunks(BLOB)))
        owner = self.successResultOf(self.cluster.locations(DIGEST))[0]
        self.agent.remove(owner)
        chunks: list[bytes] = []
        cluster = OriginClusterClient(self.client, lambda: [m for m in MEMBERS if m != owner])
        self.successResultOf(cluster.download_blob(NS, DIGEST, chunks.append))
        self.assertEqual(b"".join(chunks), BLOB)

    def test_no_members_yet_waits_for_the_refresh(self) -> None:
        """Before the membership's first refresh there are no hosts: the client waits for it."""
        known: list[str] = []
        refreshed: list[bool] = []

        def refresh() -> Deferred[None]:
            refreshed.append(True)
            known.extend(MEMBERS)
            return succeed(None)

        cluster = OriginClusterClient(self.client, lambda: list(known), refresh=refresh)
        found = self.successResultOf(cluster.locations(DIGEST))
        self.assertEqual(sorted(found), sorted(MEMBERS))
        self.assertEqual(refreshed, [True])
        self.successResultOf(cluster.locations(DIGEST))
        self.assertEqual(refreshed, [True])  # hosts known: no second refresh
        # Still none after the refresh: the same clear error as before.
        empty = OriginClusterClient(self.client, lambda: [], refresh=lambda: succeed(None))
        self.failureResultOf(empty.locations(DIGEST), NoOriginAvailable)

    def test_no_origin(self) -> None:
        """With every origin down the client says so."""
        for m in MEMBERS:
            self.agent.remove(m)
        self.failureResultOf(self.cluster.locations(DIGEST), NoOriginAvailable)

    def test_stat_metainfo_prefetch_delete_peer_context(self) -> None:
        """The single-origin calls map the API's answers."""
        host = MEMBERS[0]
        self.failureResultOf(self.client.stat(host, NS, DIGEST), BlobNotFoundAtOrigin)
        self.successResultOf(self.cluster.upload_blob(NS, DIGEST, len(BLOB), bytes_chunks(BLOB)))
        self.assertEqual(self.successResultOf(self.cluster.stat(NS, DIGEST)), len(BLOB))
        meta = self.successResultOf(self.client.metainfo(host, NS, DIGEST))
        assert meta is not None
        self.assertEqual(meta.length, len(BLOB))
        self.assertEqual(self.successResultOf(self.client.prefetch(host, NS, DIGEST)), 200)
        peer = self.successResultOf(self.client.peer_context(host))
        self.assertTrue(peer.origin)
        self.clock.advance(200)  # the replicas' staggered write-backs finish and unpersist
        self.successResultOf(self.client.delete(host, DIGEST))
        self.assertFalse(self.origins[host].store.has(DIGEST))


class FirstLast(random.Random):
    """A ``random.Random`` whose ``shuffle`` moves the first item (the owner) to the end."""

    def shuffle(self, x: MutableSequence[Any]) -> None:  # type: ignore[override]
        """Rotate ``x`` left by one."""
        x.append(x.pop(0))


class ClusterStatTests(RingTestCase):
    """``OriginClusterClient.stat`` while a blob is on one replica only, and when it is nowhere."""

    def stats(self) -> list[str]:
        """The stat requests sent so far, as ``host local`` or ``host backend``."""
        return [
            f"{r.url.split('/')[2]} {'local' if 'local=true' in r.url else 'backend'}"
            for r in self.agent.requests
            if r.method == "HEAD"
        ]

    def test_stat_moves_past_replicas_without_the_blob(self) -> None:
        """
        A blob only the owner has (its duplicates not sent, the backend not written) is
        found although the replicas asked before it answer 404; only the first asked
        looks in the backend.
        """
        owner = self.successResultOf(self.cluster.locations(DIGEST))[0]
        self.origins[owner].store.put_bytes(BLOB)
        others = [m for m in self.successResultOf(self.cluster.locations(DIGEST)) if m != owner]
        cluster = OriginClusterClient(self.client, lambda: list(MEMBERS), rng=FirstLast())
        self.agent.requests.clear()
        self.assertEqual(self.successResultOf(cluster.stat(NS, DIGEST)), len(BLOB))
        self.assertEqual(
            self.stats(), [f"{others[0]} backend", f"{others[1]} local", f"{owner} local"]
        )

    def test_stat_absent_everywhere(self) -> None:
        """A blob no replica has is BlobNotFoundAtOrigin after all three said so."""
        self.agent.requests.clear()
        self.failureResultOf(self.cluster.stat(NS, DIGEST), BlobNotFoundAtOrigin)
        stats = self.stats()
        self.assertEqual(len(stats), 3)
        self.assertEqual([s.split()[1] for s in stats], ["backend", "local", "local"])

    def test_stat_in_backend_only(self) -> None:
        """A blob only the backend has is found by the first replica asked."""
        self.backend.blobs[DIGEST.hex] = BLOB
        self.agent.requests.clear()
        self.assertEqual(self.successResultOf(self.cluster.stat(NS, DIGEST)), len(BLOB))
        self.assertEqual(len(self.stats()), 1)

    def test_stat_inconclusive_when_a_replica_is_unreachable(self) -> None:
        """
        With the owner unreachable and the others saying 404, the stat fails with
        StatInconclusive (a NoOriginAvailable), not BlobNotFoundAtOrigin: the owner may
        hold an upload the others have not received.
        """
        owner = self.successResultOf(self.cluster.locations(DIGEST))[0]
        self.origins[owner].store.put_bytes(BLOB)
        self.agent.remove(owner)
        failure = self.failureResultOf(self.cluster.stat(NS, DIGEST), StatInconclusive)
        self.assertIsInstance(failure.value, NoOriginAvailable)
        self.assertIn(owner, failure.getErrorMessage())

    def test_stat_no_answer(self) -> None:
        """With every replica failing (backend down) the stat is NoOriginAvailable only."""
        self.backend.down = True
        failure = self.failureResultOf(self.cluster.stat(NS, DIGEST), NoOriginAvailable)
        self.assertNotIsInstance(failure.value, StatInconclusive)
        self.flushLoggedErrors(BackendDown)
