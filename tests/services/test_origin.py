"""
The origin daemon built by makeService: option parsing, the service tree, and a 3-origin
ring on real sockets (127.0.0.1, free ports) with a shared filesystem backend and faults:
replication, one origin down, every disk wiped, backend down during upload, restart.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable

from prometheus_client import generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.clients.origin import (
    OriginClient,
    OriginClusterClient,
    PollPolicy,
    bytes_chunks,
)
from kraken.cluster import Membership
from kraken.config.loader import parse_config
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RetryPolicy
from kraken.io.runner import run_inline
from kraken.persistedretry import RetryQueue
from kraken.services.origin import Options, OriginService, build_origin, makeService
from kraken.services.parts import CleanupService, ClosingListener
from tests.peers.redisserver import free_port

NS = "library/test"


class OptionsTests(SynchronousTestCase):
    """Command line and service tree, without sockets."""

    def test_defaults(self) -> None:
        """With no config the origin builds its tree: queue, ring, cleanup (the agent's and
        proxy's CleanupService), peer and API ports."""
        cwd = os.getcwd()
        os.makedirs(self.mktemp())
        options = Options()
        options.parseOptions([])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, OriginService)
        kinds = [type(s) for s in service]
        self.assertIn(RetryQueue, kinds)
        self.assertIn(Membership, kinds)
        self.assertIn(CleanupService, kinds)
        listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 2)  # peer and HTTP
        self.assertIn(ClosingListener, kinds)  # the HTTP one closes its connections on stop
        self.assertEqual(os.getcwd(), cwd)

    def test_listens_on_15001_and_15002(self) -> None:
        """Started on a memory reactor, the default origin listens on 15002 and peers on 15001."""
        fake = MemoryReactorClock()
        config = parse_config("origin", {"data_dir": self.mktemp()})
        service = build_origin(config, fake, run=run_inline)
        # Only the listeners: the SQLite queue would start real threads on a fake reactor.
        for child in service:
            if isinstance(child, StreamServerEndpointService):
                child.startService()
        ports = sorted(port for port, *_ in fake.tcpServers)
        self.assertEqual(ports, [15001, 15002])
        self.assertEqual(service.api.peer.port, 15001)

    def test_peer_metrics_on_the_origin_registry(self) -> None:
        """The peer node's ``kraken_p2p_*`` metrics are in what the origin's /metrics serves."""
        config = parse_config("origin", {"data_dir": self.mktemp()})
        service = build_origin(config, MemoryReactorClock(), run=run_inline)
        text = generate_latest(service.api.metrics.registry).decode()
        self.assertIn("kraken_p2p_connections 0.0", text)
        self.assertIn("kraken_p2p_torrents 0.0", text)
        self.assertIn("# TYPE kraken_p2p_piece_bytes_total counter", text)
        self.assertIn("# TYPE kraken_p2p_pieces_failed_total counter", text)


def _blob(seed: int, size: int = 300_000) -> bytes:
    return random.Random(seed).randbytes(size)


class RingTests(TestCase):
    """Three origins in this reactor on real sockets, one fs backend shared by all."""

    timeout = 60

    def setUp(self) -> None:
        """Pick ports and directories; origins start in each test."""
        self.backend_root = os.path.abspath(self.mktemp())
        self.ports = [free_port() for _ in range(3)]
        self.members = [f"127.0.0.1:{p}" for p in self.ports]
        self.origins: dict[int, OriginService] = {}
        self.generation = 0
        http = HTTPClientFactory(reactor, timeout=10, retry=RetryPolicy(max_retries=1))
        self.addCleanup(http.close)
        self.client = OriginClient(
            http.client(), reactor, chunk_size=64 * 1024, poll=PollPolicy(initial=0.05, maximum=0.2)
        )
        self.cluster = OriginClusterClient(
            self.client, lambda: [self.members[i] for i in self.origins]
        )

    def start(self, i: int) -> OriginService:
        """Start origin ``i`` with a fresh config (data_dir per generation)."""
        config = parse_config(
            "origin",
            {
                "data_dir": os.path.abspath(f"origin{i}-{self.generation}"),
                "server": {"listen": f"tcp:{self.ports[i]}:interface=127.0.0.1"},
                "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "cluster": {"static": self.members},
                "healthcheck": {"interval": 0.2, "timeout": 1.0},
                "writeback": {"retry_interval": 0.1, "max_retry_interval": 0.3},
                "replication": {"write_back_stagger": 0.2, "upload_chunk_size": 65536},
                "metainfo": {"piece_lengths": {0: 65536}},
                "backends": [{"namespace": ".*", "backend": {"fs": {"root": self.backend_root}}}],
            },
        )
        service = build_origin(config, reactor)
        service.startService()
        self.origins[i] = service
        self.addCleanup(self.stop, i)
        return service

    async def stop(self, i: int) -> None:
        """Stop origin ``i`` if it runs."""
        service = self.origins.pop(i, None)
        if service is not None:
            await service.stopService()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (polling the reactor, 20 ms steps) for ``condition``; fail after 20 s."""
        for _ in range(1000):
            if condition():
                return
            await deferLater(reactor, 0.02)
        self.fail(f"timed out waiting for {what}")

    def backend_down(self) -> None:
        """Make the fs backend fail: its directory moves away and a file takes its place.

        A write-back running in a pool thread between the two steps may create the
        directory again: what it wrote is folded into the moved one and the file retried.
        """
        os.makedirs(self.backend_root, exist_ok=True)
        os.rename(self.backend_root, self.backend_root + ".away")
        for _ in range(10):
            try:
                with open(self.backend_root, "x") as f:
                    f.write("down")
                return
            except (IsADirectoryError, FileExistsError):
                shutil.copytree(self.backend_root, self.backend_root + ".away", dirs_exist_ok=True)
                shutil.rmtree(self.backend_root)
        self.fail("the backend directory kept coming back")

    def backend_up(self) -> None:
        """Undo :meth:`backend_down`."""
        os.remove(self.backend_root)
        os.rename(self.backend_root + ".away", self.backend_root)

    def in_backend(self, d: Digest) -> bool:
        """Whether the shared fs backend holds ``d``."""
        return os.path.exists(os.path.join(self.backend_root, "blobs", d.hex[:2], d.hex))

    async def upload(self, data: bytes) -> Digest:
        """Upload through the cluster client; return the digest."""
        d = Digest.of_bytes(data)
        stored = await self.cluster.upload_blob(NS, d, len(data), bytes_chunks(data))
        self.assertTrue(stored)
        return d

    async def download(self, d: Digest) -> bytes:
        """Download through the cluster client."""
        chunks: list[bytes] = []
        await self.cluster.download_blob(NS, d, chunks.append)
        return b"".join(chunks)

    async def start_all(self) -> None:
        """Start the three origins and wait for their rings to see every member."""
        for i in range(3):
            self.start(i)
        await self.until(
            lambda: all(len(o.membership.members) == 3 for o in self.origins.values()), "rings"
        )

    def test_upload_replicates_and_writes_back(self) -> None:
        """An upload is on all three replicas and reaches the backend; GET serves it anywhere."""

        async def run() -> None:
            await self.start_all()
            data = _blob(1)
            d = await self.upload(data)
            await self.until(lambda: all(o.store.has(d) for o in self.origins.values()), "replicas")
            await self.until(lambda: self.in_backend(d), "write-back")
            for i in range(3):
                chunks: list[bytes] = []
                await self.client.download(self.members[i], NS, d, chunks.append)
                self.assertEqual(b"".join(chunks), data)
            meta = await self.client.metainfo(self.members[0], NS, d)
            assert meta is not None
            self.assertEqual((meta.digest, meta.piece_length), (d, 65536))
            await self.until(
                lambda: not any(o.store.is_persisted(d) for o in self.origins.values()),
                "unpersisted after write-back",
            )

        return ensureDeferred(run())

    def test_one_of_three_down(self) -> None:
        """With one origin stopped, every blob is still served and uploads still work."""

        async def run() -> None:
            await self.start_all()
            blobs = [_blob(10 + i, 50_000) for i in range(6)]
            digests = [await self.upload(b) for b in blobs]
            await self.until(
                lambda: all(o.store.has(d) for o in self.origins.values() for d in digests),
                "replicas",
            )
            await self.stop(1)
            self.origins_alive = list(self.origins)
            for d, data in zip(digests, blobs, strict=True):
                self.assertEqual(await self.download(d), data)
            d = await self.upload(_blob(99, 20_000))
            self.assertEqual(await self.download(d), _blob(99, 20_000))

        return ensureDeferred(run())

    def test_all_disks_wiped(self) -> None:
        """After every origin lost its disk, every blob comes back from the backend on demand."""

        async def run() -> None:
            await self.start_all()
            blobs = [_blob(20 + i, 70_000) for i in range(4)]
            digests = [await self.upload(b) for b in blobs]
            await self.until(lambda: all(self.in_backend(d) for d in digests), "write-back")
            for i in range(3):
                await self.stop(i)
            self.generation += 1  # new, empty data directories
            await self.start_all()
            self.assertFalse(any(o.store.has(d) for o in self.origins.values() for d in digests))
            for d, data in zip(digests, blobs, strict=True):
                self.assertEqual(await self.download(d), data)
            # The fetching owner copies the blob to the other replicas.
            await self.until(
                lambda: all(o.store.has(d) for o in self.origins.values() for d in digests),
                "re-replication",
            )

        return ensureDeferred(run())

    def test_backend_down_during_upload(self) -> None:
        """With the backend unwritable the upload succeeds; the blob reaches it once it is back."""

        async def run() -> None:
            await self.start_all()
            self.backend_down()
            data = _blob(3)
            d = await self.upload(data)
            await deferLater(reactor, 0.5)
            self.assertFalse(self.in_backend(d))
            self.assertTrue(all(o.store.is_persisted(d) for o in self.origins.values()))
            self.backend_up()
            await self.until(lambda: self.in_backend(d), "write-back after the backend came back")
            with open(os.path.join(self.backend_root, "blobs", d.hex[:2], d.hex), "rb") as f:  # noqa: ASYNC230
                self.assertEqual(f.read(), data)
            self.flushLoggedErrors()

        return ensureDeferred(run())

    def test_writeback_survives_restart(self) -> None:
        """An acknowledged upload whose write-back could not run yet is written after a restart."""

        async def run() -> None:
            self.members = self.members[:1]
            self.start(0)
            self.backend_down()
            data = _blob(4)
            d = await self.upload(data)
            await deferLater(reactor, 0.3)
            await self.stop(0)
            self.backend_up()
            self.assertFalse(self.in_backend(d))
            service = self.start(0)  # same data_dir: the SQLite queue and the store survive
            self.assertTrue(service.store.is_persisted(d))
            await self.until(lambda: self.in_backend(d), "write-back after restart")
            self.flushLoggedErrors()

        return ensureDeferred(run())
