"""
The proxy in front of a two-origin ring while a pushed blob is still being replicated.

A blob push is acknowledged (201) once the owner of the blob committed it; the owner then
duplicates it to the other replica and writes it back to the shared backend in the
background.  Here both are held: the origins reach each other through a
:class:`HeldDuplicates` agent and the backend's uploads wait on a Deferred.  The proxy's
own client reaches both origins directly, and its shuffle is replaced so that the test
decides which replica the proxy asks first.
"""

from __future__ import annotations

import json
import random
from collections.abc import MutableSequence
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from kraken.api.distribution import DOCKER_MANIFEST_V2
from kraken.api.proxy import ProxyAPI
from kraken.backends.interface import UploadSource
from kraken.clients.origin import OriginClient, OriginClusterClient
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RetryPolicy
from kraken.http.testing import HostRoutingAgent
from kraken.io.runner import run_inline
from kraken.store import BlobStore
from tests.api.test_proxy import MemoryTags, layer
from tests.oci import manifest_of
from tests.origin.harness import MemoryBackend, MemoryOrigin, make_origin

BASE = "http://proxy:15000"
MEMBERS = ("o1:15002", "o2:15002")
REPO = "loop/image"
CONFIG = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()


class HeldDuplicates(HostRoutingAgent):
    """Origin-to-origin traffic whose duplicate uploads wait until :meth:`release`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[None]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """Hold requests to the duplicate upload endpoints; pass the rest."""
        if b"/internal/duplicate/" not in uri:
            return super().request(method, uri, headers, bodyProducer)
        gate: Deferred[None] = Deferred()
        self.held.append(gate)
        parent = super()
        return gate.addCallback(lambda _: parent.request(method, uri, headers, bodyProducer))

    def release(self) -> None:
        """Let the held requests through."""
        held, self.held = self.held, []
        for gate in held:
            gate.callback(None)


class HeldBackend(MemoryBackend):
    """A memory backend whose uploads (write-backs) wait until :meth:`release`."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Deferred[None]] = []

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """Store the bytes once released."""
        if isinstance(source, str):
            with open(source, "rb") as f:
                source = f.read()
        gate: Deferred[None] = Deferred()
        self.waiting.append(gate)
        data = source
        return gate.addCallback(lambda _: MemoryBackend.upload(self, namespace, name, data))

    def release(self) -> None:
        """Complete the waiting uploads."""
        waiting, self.waiting = self.waiting, []
        for gate in waiting:
            gate.callback(None)


class FixedOrder(random.Random):
    """A ``random.Random`` whose ``shuffle`` puts the list in ring order, or reverses it."""

    def __init__(self, reverse: bool) -> None:
        super().__init__(0)
        self.reverse = reverse

    def shuffle(self, x: MutableSequence[Any]) -> None:  # type: ignore[override]
        """Reverse ``x`` when asked to (the other replica first), else leave it."""
        if self.reverse:
            x.reverse()


class ReplicationWindowTests(SynchronousTestCase):
    """A manifest PUT right after its blobs' 201s, replication and write-back still held."""

    def setUp(self) -> None:
        """Two origins sharing a held backend; the proxy reaches them directly."""
        self.clock = Clock()
        self.mesh = HeldDuplicates()
        self.front = HostRoutingAgent()
        self.backend = HeldBackend()
        self.origins: dict[str, MemoryOrigin] = {}
        for member in MEMBERS:
            origin = make_origin(
                self,
                self.clock,
                address=member,
                members=MEMBERS,
                backend=self.backend,
                agent=self.mesh,
            )
            self.front.add(member, origin.api.resource())
            self.origins[member] = origin
        self.tags = MemoryTags()
        self.addCleanup(self.release)

    def release(self) -> None:
        """Let the held duplicates and write-backs finish."""
        self.mesh.release()
        self.backend.release()
        self.clock.advance(100)

    def proxy(self, *, other_first: bool) -> StubTreq:
        """A proxy whose stats ask the blob's owner first, or the other replica first."""
        factory = HTTPClientFactory(self.clock, agent=self.front, retry=RetryPolicy(max_retries=0))
        cluster = OriginClusterClient(
            OriginClient(factory.client(), self.clock, chunk_size=1000),
            lambda: list(MEMBERS),
            rng=FixedOrder(other_first),
        )
        store = BlobStore(self.mktemp(), self.clock)
        api = ProxyAPI(store, run_inline, cluster, self.tags, self.clock)
        return StubTreq(api.resource())

    def call(self, treq: StubTreq, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        """One request to the proxy: (status, body)."""
        d = treq.request(method, BASE + path, **kwargs)
        for _ in range(10):
            self.front.flush()
            treq.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content())

    def push_blob(self, treq: StubTreq, data: bytes) -> Digest:
        """POST, then PUT with the body (skopeo's monolithic upload): must be 201."""
        digest = Digest.of_bytes(data)
        d = treq.request("POST", f"{BASE}/v2/{REPO}/blobs/uploads/")
        treq.flush()
        started = self.successResultOf(d)
        self.assertEqual(started.code, 202)
        location = started.headers.getRawHeaders("Location")[0]
        code, body = self.call(treq, "PUT", f"{location}?digest={digest}", data=data)
        self.assertEqual(code, 201, body)
        return digest

    def owner(self, digest: Digest) -> str:
        """The replica that took the upload."""
        owner = self.origins[MEMBERS[0]].api.ring.owner(digest)
        self.assertTrue(self.origins[owner].store.has(digest))
        return owner

    def other(self, digest: Digest) -> MemoryOrigin:
        """The replica that has not received its duplicate yet."""
        return next(o for m, o in self.origins.items() if m != self.owner(digest))

    def put_manifest(self, treq: StubTreq, blobs: list[bytes]) -> tuple[int, bytes]:
        """PUT a manifest of ``CONFIG`` and ``blobs`` by tag."""
        return self.call(
            treq,
            "PUT",
            f"/v2/{REPO}/manifests/v1",
            data=manifest_of(CONFIG, blobs),
            headers={"Content-Type": DOCKER_MANIFEST_V2},
        )

    def check_found_in_window(self, *, other_first: bool) -> None:
        """Push the config and a layer, hold their replication, then PUT the manifest: 201."""
        treq = self.proxy(other_first=other_first)
        self.push_blob(treq, CONFIG)
        blob = layer(7)
        digest = self.push_blob(treq, blob)
        # The window: only the owner has the layer; the backend has nothing yet.
        self.assertFalse(self.other(digest).store.has(digest))
        self.assertEqual(self.backend.blobs, {})
        self.assertTrue(self.mesh.held)
        code, body = self.put_manifest(treq, [blob])
        self.assertEqual(code, 201, body)

    def test_other_replica_asked_first(self) -> None:
        """
        A layer acknowledged with 201 is found by the manifest PUT that follows even when
        the proxy asks the replica that has not received it yet first (the other replica
        answers 404 from its cache and the backend; the owner has it).
        """
        self.check_found_in_window(other_first=True)

    def test_owner_asked_first(self) -> None:
        """The same push with the owner asked first also succeeds."""
        self.check_found_in_window(other_first=False)

    def test_missing_layer_refused_in_window(self) -> None:
        """
        A layer never pushed is still 404 MANIFEST_BLOB_UNKNOWN although a replica is
        behind: every replica says it lacks it.
        """
        treq = self.proxy(other_first=True)
        self.push_blob(treq, CONFIG)
        pushed = layer(7)
        self.push_blob(treq, pushed)
        code, body = self.put_manifest(treq, [pushed, layer(8)])
        self.assertEqual(code, 404, body)
        error = json.loads(body)["errors"][0]
        self.assertEqual(error["code"], "MANIFEST_BLOB_UNKNOWN")
        self.assertEqual(error["detail"], {"digest": str(Digest.of_bytes(layer(8)))})

    def test_unreachable_owner_is_not_unknown(self) -> None:
        """
        While the owner of a just-pushed layer cannot be reached and the other replica has
        not received it, the manifest PUT answers 503 UNAVAILABLE (try again), not
        MANIFEST_BLOB_UNKNOWN; a HEAD of the layer answers 404, so a client pushes it again.
        """
        treq = self.proxy(other_first=True)
        self.push_blob(treq, CONFIG)
        blob = layer(7)
        digest = self.push_blob(treq, blob)
        owner = self.owner(digest)
        self.front.remove(owner)
        code, body = self.put_manifest(treq, [blob])
        self.assertEqual(code, 503, body)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAVAILABLE")
        code, _ = self.call(treq, "HEAD", f"/v2/{REPO}/blobs/{digest}")
        self.assertEqual(code, 404)
