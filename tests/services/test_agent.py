"""The agent daemon built by makeService: options, the service tree, and its config mappings."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.config.sections import CleanupConfig
from kraken.config.values import DiskLimit
from kraken.core import Digest
from kraken.http.server import TLS_ANSWER
from kraken.io import run_inline
from kraken.services.agent import (
    AgentService,
    CleanupService,
    Options,
    PeerNodeService,
    SeedCachedService,
    build_agent,
    cleanup_policy,
    engine_config,
    makeService,
)
from kraken.services.parts import ClosingListener
from kraken.store import BlobStore, CleanupPolicy, StoreCleaner
from tests.http.test_server import answer_to_tls_hello


class _MemoryReactor(MemoryReactorClock):
    """A memory reactor that keeps what worker threads hand back instead of running it.

    A started agent lists its cache in the I/O pool; these tests look at its tree and
    listeners, not at that background work.
    """

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Any] = []

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        """Keep the call (list.append is atomic)."""
        self.from_threads.append((f, args, kw))


class OptionsTests(SynchronousTestCase):
    """Command line and tree, on a memory reactor."""

    def test_defaults(self) -> None:
        """With no config: the tree has the three listeners and the cleanup timer."""
        cwd = os.getcwd()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        os.chdir(tmp)
        self.addCleanup(os.chdir, cwd)
        options = Options()
        options.parseOptions([])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, AgentService)
        kinds = [type(s) for s in service]
        listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 3)  # peer, agent API, registry
        self.assertEqual(kinds.count(ClosingListener), 2)  # the HTTP ones close connections
        self.assertIn(CleanupService, kinds)
        self.assertTrue(os.path.isdir(os.path.join(tmp, "kraken-data", "agent", "store")))

    def test_listens_on_default_ports(self) -> None:
        """Started on a memory reactor: 16000, 16001 and 16002, all on 127.0.0.1."""
        fake = _MemoryReactor()
        # Cleanup off: its first run would go to a real thread, which a memory reactor lacks.
        raw = {"data_dir": self.mktemp(), "cleanup": {"enabled": False}}
        service = build_agent(parse_config("agent", raw), fake)
        service.startService()
        self.addCleanup(service.stopService)
        listening = sorted((port, interface) for port, _, _, interface in fake.tcpServers)
        self.assertEqual(
            listening, [(16000, "127.0.0.1"), (16001, "127.0.0.1"), (16002, "127.0.0.1")]
        )

    def test_registry_port_refuses_tls(self) -> None:
        """The registry port (16000) answers a TLS ClientHello with a plain 400 and closes."""
        fake = _MemoryReactor()
        raw = {"data_dir": self.mktemp(), "cleanup": {"enabled": False}}
        service = build_agent(parse_config("agent", raw), fake)
        service.startService()
        self.addCleanup(service.stopService)
        [registry] = [factory for port, factory, _, _ in fake.tcpServers if port == 16000]
        self.assertEqual(answer_to_tls_hello(registry), (TLS_ANSWER, True))

    def test_overrides(self) -> None:
        """--registry-listen and friends replace the configured endpoints."""
        fake = _MemoryReactor()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"data_dir: {self.mktemp()}\ncleanup:\n  enabled: false\n")
        options = Options()
        options.parseOptions(
            ["--config", path, "--registry-listen", "tcp:26000:interface=127.0.0.1"]
        )
        service = makeService(options, fake)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIn(26000, [port for port, *_ in fake.tcpServers])

    def test_cleanup_off(self) -> None:
        """``cleanup.enabled: false`` leaves no cleanup timer."""
        config = parse_config("agent", {"data_dir": self.mktemp(), "cleanup": {"enabled": False}})
        service = build_agent(config, MemoryReactorClock())
        self.assertNotIn(CleanupService, [type(s) for s in service])
        self.assertIsNone(service.cleaner)

    def test_bad_config(self) -> None:
        """An unknown key stops option parsing with the key named."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("registry:\n  nope: 1\n")
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--config", path])
        self.assertIn("nope", str(e.exception))


class CacheAndEngineTests(SynchronousTestCase):
    """The engine learns of the cache at start and forgets what cleanup removes."""

    def test_tree_seeds_after_the_engine_starts(self) -> None:
        """The seeding service starts after the peer node and cleanup reports to the downloader."""
        config = parse_config("agent", {"data_dir": self.mktemp()})
        service = build_agent(config, MemoryReactorClock())
        kinds = [type(s) for s in service]
        self.assertEqual(kinds.index(SeedCachedService), kinds.index(PeerNodeService) + 2)
        [seeder] = [s for s in service if isinstance(s, SeedCachedService)]
        self.assertIs(seeder.downloader, service.downloader)
        [cleanup] = [s for s in service if isinstance(s, CleanupService)]
        self.assertEqual(cleanup.on_removed, service.downloader.forget)

    def test_cleanup_reports_removed_digests(self) -> None:
        """A cleanup pass hands the digests it removed from the cache to on_removed."""
        reactor = Clock()
        store = BlobStore(self.mktemp(), reactor)
        old = store.put_bytes(b"old layer").digest
        reactor.advance(120)
        kept = store.put_bytes(b"new layer").digest
        reactor.advance(30)
        cleaner = StoreCleaner(store, cache=CleanupPolicy(tti=None, ttl=100))
        removed: list[set[Digest]] = []
        cleanup = CleanupService(
            60,
            cleaner,
            reactor,
            run_inline,
            on_removed=removed.append,  # type: ignore[arg-type]
        )
        self.successResultOf(cleanup.run_once())
        self.assertEqual(removed, [{old}])
        self.assertTrue(store.has(kept))
        self.successResultOf(cleanup.run_once())
        self.assertEqual(removed, [{old}])  # nothing removed: not called

    def test_seeding_stops_with_the_tree(self) -> None:
        """Stopping the service cancels a cache listing still running, without logging an error."""
        cancelled: list[object] = []
        pending: Deferred[int] = Deferred(cancelled.append)

        class Downloader:
            def seed_cached(self) -> Deferred[int]:
                return pending

        seeder = SeedCachedService(Downloader())  # type: ignore[arg-type]
        seeder.startService()
        seeder.stopService()
        self.assertEqual(cancelled, [pending])
        self.assertEqual(self.flushLoggedErrors(), [])
        # Another failure is logged.
        pending = Deferred()
        seeder.startService()
        pending.errback(OSError("disk gone"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class MappingTests(SynchronousTestCase):
    """Config sections to store and engine settings."""

    def test_cleanup_policy(self) -> None:
        """0 means never; a percent watermark becomes bytes of the filesystem; off is None."""
        config = CleanupConfig(
            tti=3600.0,
            ttl=0.0,
            high_watermark=DiskLimit(percent=50.0),
            low_watermark=DiskLimit(size=1000),
        )
        policy = cleanup_policy(config, 10_000)
        assert policy is not None
        self.assertEqual(
            (policy.tti, policy.ttl, policy.high_watermark, policy.low_watermark),
            (3600.0, None, 5000, 1000),
        )
        self.assertIsNone(cleanup_policy(CleanupConfig(enabled=False), 10_000))

    def test_engine_config(self) -> None:
        """Scheduler settings reach the engine config by name."""
        config = parse_config(
            "agent",
            {"data_dir": self.mktemp(), "scheduler": {"pipeline_limit": 7, "seeder_tti": "1m"}},
        )
        engine = engine_config(config.scheduler)
        self.assertEqual((engine.pipeline_limit, engine.seeder_tti), (7, 60.0))
        self.assertTrue(engine.announce)
        self.assertFalse(engine.origin)
