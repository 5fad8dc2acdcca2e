"""The agent daemon built by makeService: options, the service tree, and its config mappings."""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.config.sections import CleanupConfig
from kraken.config.values import DiskLimit
from kraken.http.plain import TLS_ANSWER
from kraken.services.agent import (
    AgentService,
    CleanupService,
    Options,
    build_agent,
    cleanup_policy,
    engine_config,
    makeService,
)
from tests.http.test_plain import answer_to_tls_hello


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
        self.assertEqual(kinds.count(StreamServerEndpointService), 3)
        self.assertIn(CleanupService, kinds)
        self.assertTrue(os.path.isdir(os.path.join(tmp, "kraken-data", "agent", "store")))

    def test_listens_on_default_ports(self) -> None:
        """Started on a memory reactor: 16000, 16001 and 16002, all on 127.0.0.1."""
        fake = MemoryReactorClock()
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
        fake = MemoryReactorClock()
        raw = {"data_dir": self.mktemp(), "cleanup": {"enabled": False}}
        service = build_agent(parse_config("agent", raw), fake)
        service.startService()
        self.addCleanup(service.stopService)
        [registry] = [factory for port, factory, _, _ in fake.tcpServers if port == 16000]
        self.assertEqual(answer_to_tls_hello(registry), (TLS_ANSWER, True))

    def test_overrides(self) -> None:
        """--registry-listen and friends replace the configured endpoints."""
        fake = MemoryReactorClock()
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
