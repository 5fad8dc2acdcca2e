"""
The build-index daemon built by makeService: option parsing, the service tree, and two
clusters on real sockets (127.0.0.1, free ports), each an origin and a build-index, cluster A
replicating every tag to cluster B: a tag and its blobs arrive in B, also when B's build-index
is down during the put or A's restarts with the task pending; a mutable tag keeps its last digest.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.clients.buildindex import (
    BuildIndexClient,
    BuildIndexUnavailable,
    TagNotFound,
)
from kraken.clients.origin import (
    OriginClient,
    OriginClusterClient,
    PollPolicy,
    bytes_chunks,
)
from kraken.config.loader import parse_config
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RetryPolicy
from kraken.io.runner import run_inline
from kraken.persistedretry import RetryQueue
from kraken.services.build_index import (
    BuildIndexService,
    Options,
    build_build_index,
    makeService,
)
from kraken.services.origin import OriginService, build_origin
from kraken.services.parts import ClosingListener
from tests.peers.redisserver import free_port

REPO = "test/app"
TAG = f"{REPO}:latest"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


class OptionsTests(SynchronousTestCase):
    """Command line and service tree, without sockets."""

    def test_defaults(self) -> None:
        """With no config the build-index builds its tree: replication queue and API port."""
        options = Options()
        options.parseOptions([])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, BuildIndexService)
        kinds = [type(s) for s in service]
        self.assertIn(RetryQueue, kinds)
        self.assertEqual(kinds.count(ClosingListener), 1)

    def test_listens_on_15004(self) -> None:
        """Started on a memory reactor, the default build-index listens on 15004."""
        fake = MemoryReactorClock()
        config = parse_config("build-index", {"data_dir": self.mktemp()})
        service = build_build_index(config, fake, run=run_inline)
        # Only the listener: the SQLite queue needs a reactor with threads.
        for child in service:
            if isinstance(child, StreamServerEndpointService):
                child.startService()
                self.addCleanup(child.stopService)
        self.assertEqual([port for port, *_ in fake.tcpServers], [15004])
        self.assertEqual(service.api.origin_address, "127.0.0.1:15002")


def _blob(seed: int, size: int = 100_000) -> bytes:
    return random.Random(seed).randbytes(size)


def _manifest(config: Digest, layers: list[Digest]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": SCHEMA2,
            "config": {"mediaType": "application/json", "digest": str(config), "size": 1},
            "layers": [{"mediaType": "x", "digest": str(d), "size": 1} for d in layers],
        }
    ).encode()


class Cluster:
    """One cluster's ports and data directories: an origin and a build-index."""

    def __init__(self, root: str, remotes: dict[str, list[str]]) -> None:
        self.root = root
        self.origin_port = free_port()
        self.bi_port = free_port()
        self.origin_address = f"127.0.0.1:{self.origin_port}"
        self.address = f"127.0.0.1:{self.bi_port}"
        self.remotes = remotes
        self.origin: OriginService | None = None
        self.build_index: BuildIndexService | None = None

    def start_origin(self) -> OriginService:
        """Start the origin."""
        config = parse_config(
            "origin",
            {
                "data_dir": os.path.join(self.root, "origin"),
                "server": {"listen": f"tcp:{self.origin_port}:interface=127.0.0.1"},
                "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "cluster": {"static": [self.origin_address]},
                "healthcheck": {"interval": 0.2, "timeout": 1.0},
                "writeback": {"retry_interval": 0.1, "max_retry_interval": 0.3},
                "metainfo": {"piece_lengths": {0: 65536}},
                "backends": [
                    {"namespace": ".*", "backend": {"fs": {"root": self.root + "/backend"}}}
                ],
            },
        )
        self.origin = build_origin(config, reactor)
        self.origin.startService()
        return self.origin

    def start_build_index(self) -> BuildIndexService:
        """Start the build-index (same data_dir every time: its queue survives restarts)."""
        config = parse_config(
            "build-index",
            {
                "data_dir": os.path.join(self.root, "build-index"),
                "server": {"listen": f"tcp:{self.bi_port}:interface=127.0.0.1"},
                "cluster": {
                    "hosts": {"static": [self.address]},
                    "healthcheck": {"interval": 0.2, "timeout": 1.0},
                },
                "origin": {
                    "hosts": {"static": [self.origin_address]},
                    "healthcheck": {"interval": 0.2, "timeout": 1.0},
                },
                "remotes": self.remotes,
                "tag_replication": {"retry_interval": 0.1, "max_retry_interval": 0.3},
                "backends": [{"namespace": ".*", "backend": {"fs": {"root": self.root + "/tags"}}}],
            },
        )
        self.build_index = build_build_index(config, reactor)
        self.build_index.startService()
        return self.build_index

    async def stop_build_index(self) -> None:
        """Stop the build-index if it runs."""
        service, self.build_index = self.build_index, None
        if service is not None:
            await service.stopService()

    async def stop(self) -> None:
        """Stop everything that runs."""
        await self.stop_build_index()
        origin, self.origin = self.origin, None
        if origin is not None:
            await origin.stopService()


class TwoClustersTests(TestCase):
    """Cluster A replicates ``.*`` to cluster B; real sockets, one reactor."""

    timeout = 60

    def setUp(self) -> None:
        """Ports, directories and clients; the daemons start in each test."""
        root = os.path.abspath(self.mktemp())
        self.b = Cluster(os.path.join(root, "b"), {})
        self.a = Cluster(os.path.join(root, "a"), {self.b.address: [".*"]})
        http = HTTPClientFactory(reactor, timeout=10, retry=RetryPolicy(max_retries=0))
        self.addCleanup(http.close)
        self.http = http
        self.origin_client = OriginClient(
            http.client(), reactor, chunk_size=64 * 1024, poll=PollPolicy(initial=0.05, maximum=0.2)
        )
        self.addCleanup(self.a.stop)
        self.addCleanup(self.b.stop)

    def index(self, cluster: Cluster) -> BuildIndexClient:
        """A client of ``cluster``'s build-index."""
        return BuildIndexClient.for_host(self.http.client(), cluster.address, reactor)

    def ring(self, cluster: Cluster) -> OriginClusterClient:
        """A client of ``cluster``'s origin."""
        return OriginClusterClient(self.origin_client, lambda: [cluster.origin_address])

    async def until(self, condition: Callable[[], Any], what: str) -> None:
        """Wait (polling, 50 ms steps) until the async ``condition()`` is true; fail after 30 s."""
        for _ in range(600):
            if await condition():
                return
            await deferLater(reactor, 0.05)
        self.fail(f"timed out waiting for {what}")

    async def push_image(self, seed: int) -> tuple[Digest, dict[Digest, bytes]]:
        """Upload a config, two layers and their manifest to A's origin."""
        blobs = [_blob(seed * 10 + i) for i in range(3)]
        digests = [Digest.of_bytes(b) for b in blobs]
        manifest = _manifest(digests[0], digests[1:])
        everything = {Digest.of_bytes(manifest): manifest, **dict(zip(digests, blobs, strict=True))}
        for d, data in everything.items():
            await self.ring(self.a).upload_blob(REPO, d, len(data), bytes_chunks(data))
        return Digest.of_bytes(manifest), everything

    async def tag_in(self, cluster: Cluster, digest: Digest) -> bool:
        """Whether ``cluster``'s build-index answers ``digest`` for the tag."""
        try:
            return await self.index(cluster).get_tag(TAG) == digest
        except TagNotFound:
            return False

    async def assert_blobs_in(self, cluster: Cluster, blobs: dict[Digest, bytes]) -> None:
        """Every blob downloads from ``cluster``'s origin with its bytes."""
        for d, data in blobs.items():
            chunks: list[bytes] = []
            await self.ring(cluster).download_blob(REPO, d, chunks.append)
            self.assertEqual(b"".join(chunks), data)

    async def start_all(self, *, b_index: bool = True) -> None:
        """Start both origins and A's build-index, and B's unless told not to."""
        self.a.start_origin()
        self.b.start_origin()
        self.a.start_build_index()
        if b_index:
            self.b.start_build_index()
        await deferLater(reactor, 0.05)

    def test_tag_arrives_in_b_with_its_blobs(self) -> None:
        """A tag put in A with replicate=true reaches B's build-index, its blobs B's origin."""

        async def run() -> None:
            await self.start_all()
            digest, blobs = await self.push_image(1)
            await self.index(self.a).put_tag(TAG, digest, replicate=True)
            self.assertEqual(await self.index(self.a).get_tag(TAG), digest)
            await self.until(lambda: self.tag_in(self.b, digest), "the tag in B")
            await self.assert_blobs_in(self.b, blobs)

        return ensureDeferred(run())

    def test_b_down_during_the_put(self) -> None:
        """With B's build-index down the task waits and retries; once B is up the tag arrives."""

        async def run() -> None:
            await self.start_all(b_index=False)
            digest, blobs = await self.push_image(2)
            await self.index(self.a).put_tag(TAG, digest, replicate=True)
            await deferLater(reactor, 0.5)
            assert self.a.build_index is not None
            self.assertEqual(len(self.a.build_index.queue.tasks()), 1)
            self.assertGreater(self.a.build_index.queue.tasks()[0].attempts, 0)
            self.b.start_build_index()
            await self.until(lambda: self.tag_in(self.b, digest), "the tag in B")
            await self.assert_blobs_in(self.b, blobs)
            self.assertTrue(self.flushLoggedErrors(BuildIndexUnavailable))

        return ensureDeferred(run())

    def test_restart_with_a_pending_task(self) -> None:
        """A's build-index restarted while a replication is pending still delivers it."""

        async def run() -> None:
            await self.start_all(b_index=False)
            digest, blobs = await self.push_image(3)
            await self.index(self.a).put_tag(TAG, digest, replicate=True)
            await self.a.stop_build_index()
            self.b.start_build_index()
            await deferLater(reactor, 0.5)
            self.assertFalse(await self.tag_in(self.b, digest))
            self.a.start_build_index()
            await self.until(lambda: self.tag_in(self.b, digest), "the tag in B")
            await self.assert_blobs_in(self.b, blobs)
            self.flushLoggedErrors(BuildIndexUnavailable)

        return ensureDeferred(run())

    def test_mutable_tag(self) -> None:
        """Put twice with different digests: A answers the second at once, B gets it too."""

        async def run() -> None:
            await self.start_all()
            first, _ = await self.push_image(4)
            second, blobs = await self.push_image(5)
            await self.index(self.a).put_tag(TAG, first, replicate=True)
            await self.index(self.a).put_tag(TAG, second, replicate=True)
            self.assertEqual(await self.index(self.a).get_tag(TAG), second)
            await self.until(lambda: self.tag_in(self.b, second), "the second digest in B")
            await self.assert_blobs_in(self.b, blobs)
            await deferLater(reactor, 0.3)
            self.assertEqual(await self.index(self.b).get_tag(TAG), second)

        return ensureDeferred(run())
