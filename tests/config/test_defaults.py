"""With no configuration file, every daemon gets the single-host defaults of DESIGN 5-11."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kraken.config import (
    CONFIG_CLASSES,
    DiskLimit,
    HostListConfig,
    load_config,
    parse_config,
    parse_endpoint,
)
from kraken.core import DEFAULT_PIECE_LENGTHS

MiB = 2**20


def static(*addresses: str) -> HostListConfig:
    """A static host list."""
    return HostListConfig(static=addresses)


class AgentDefaultsTests(SynchronousTestCase):
    """The agent's defaults."""

    def setUp(self) -> None:
        self.config = load_config("agent", None)

    def test_listeners(self) -> None:
        """Registry 16000, peer 16001, server 16002, all on 127.0.0.1."""
        self.assertEqual(self.config.registry.listen, "tcp:16000:interface=127.0.0.1")
        self.assertEqual(self.config.peer.listen, "tcp:16001:interface=127.0.0.1")
        self.assertEqual(self.config.server.listen, "tcp:16002:interface=127.0.0.1")
        self.assertEqual(self.config.peer.advertised(), "127.0.0.1:16001")
        self.assertEqual(self.config.registry.allowed_networks, ("127.0.0.0/8", "::1/128"))

    def test_other_components(self) -> None:
        """Trackers at 15003 and build-indexes at 15004, checked passively (3 in 5 min)."""
        self.assertEqual(self.config.tracker.hosts, static("127.0.0.1:15003"))
        self.assertEqual(self.config.build_index.hosts, static("127.0.0.1:15004"))
        self.assertEqual(self.config.tracker.hashring.max_replica, 3)
        self.assertEqual(self.config.tracker.hashring.refresh_interval, 10.0)
        for passive in (self.config.tracker.passive_health, self.config.build_index.passive_health):
            self.assertEqual((passive.fails, passive.fail_timeout), (3, 300.0))
        self.assertEqual(self.config.tracker.hosts.ttl, 5.0)

    def test_data_and_cleanup(self) -> None:
        """Data under ./kraken-data/agent; TTI 6 h, TTL 24 h, eviction at 90% of the disk."""
        self.assertEqual(self.config.data_dir, "./kraken-data/agent")
        cleanup = self.config.cleanup
        self.assertEqual((cleanup.tti, cleanup.ttl, cleanup.interval), (21600.0, 86400.0, 1800.0))
        self.assertEqual(cleanup.high_watermark, DiskLimit(percent=90.0))
        self.assertIsNone(cleanup.low_watermark)
        self.assertTrue(cleanup.enabled)

    def test_tags_and_metainfo(self) -> None:
        """Tags are cached 5 s; metainfo polls 1 s x1.3 up to 5 s, for 15 min at most."""
        self.assertEqual(self.config.registry.tag_cache_ttl, 5.0)
        poll = self.config.metainfo_poll
        self.assertEqual(
            (poll.initial, poll.multiplier, poll.maximum, poll.jitter, poll.give_up_after),
            (1.0, 1.3, 5.0, 0.05, 900.0),
        )

    def test_scheduler(self) -> None:
        """The P2P engine table of DESIGN 5 (pipelines 2 and 1, tuned by bench.swarm)."""
        scheduler = self.config.scheduler
        self.assertEqual(scheduler.max_conns_per_torrent, 10)
        self.assertEqual(scheduler.max_dials_per_torrent, 5)
        self.assertEqual(scheduler.origin_spread_window, 10.0)
        self.assertEqual(scheduler.peers_per_announce, 50)
        self.assertEqual((scheduler.pipeline_limit, scheduler.origin_pipeline_limit), (2, 1))
        self.assertIsNone(scheduler.endgame_threshold)
        self.assertEqual(scheduler.effective_endgame_threshold(), 2)
        self.assertEqual((scheduler.upload_slots, scheduler.origin_fallback_below), (None, None))
        self.assertEqual(
            (scheduler.request_min_timeout, scheduler.request_timeout_per_mib), (4.0, 4.0)
        )
        self.assertEqual(scheduler.blacklist_duration, 30.0)
        self.assertEqual((scheduler.conn_idle_timeout, scheduler.conn_lifetime), (30.0, 3600.0))
        self.assertEqual(scheduler.handshake_timeout, 5.0)
        self.assertEqual(
            (scheduler.announce_interval, scheduler.complete_announce_interval), (3.0, 30.0)
        )
        self.assertEqual((scheduler.seeder_tti, scheduler.leecher_tti), (300.0, 300.0))
        bandwidth = scheduler.bandwidth
        self.assertTrue(bandwidth.enabled)
        self.assertEqual((bandwidth.egress, bandwidth.ingress), (200 * MiB, 300 * MiB))
        self.assertEqual(bandwidth.chunk_size, 64 * 1024)

    def test_tls_off(self) -> None:
        """No TLS material by default."""
        tls = self.config.tls
        self.assertEqual((tls.ca, tls.cert, tls.key, tls.client_cert), (None, None, None, None))
        self.assertFalse(tls.require_client_cert_for_reads)


class OriginDefaultsTests(SynchronousTestCase):
    """The origin's defaults."""

    def setUp(self) -> None:
        self.config = load_config("origin", None)

    def test_listeners_and_ring(self) -> None:
        """HTTP 15002 and peer 15001 on 127.0.0.1; a ring of itself with 3 replicas."""
        self.assertEqual(self.config.server.listen, "tcp:15002:interface=127.0.0.1")
        self.assertEqual(self.config.peer.listen, "tcp:15001:interface=127.0.0.1")
        self.assertEqual(self.config.server.advertised(), "127.0.0.1:15002")
        self.assertEqual(self.config.peer.advertised(), "127.0.0.1:15001")
        self.assertEqual(self.config.cluster, static("127.0.0.1:15002"))
        self.assertEqual(self.config.hashring.max_replica, 3)
        self.assertEqual(self.config.hashring.refresh_interval, 10.0)
        self.assertEqual(self.config.hashring.membership_wait_timeout, 60.0)

    def test_health(self) -> None:
        """Active checks: 3 fails down, 2 passes up, every 10 s, 3 s timeout."""
        check = self.config.healthcheck
        self.assertEqual(
            (check.enabled, check.fails, check.passes, check.interval, check.timeout),
            (True, 3, 2, 10.0, 3.0),
        )

    def test_storage(self) -> None:
        """Data under ./kraken-data/origin, the fs backend beside it, DESIGN 3 piece lengths."""
        self.assertEqual(self.config.data_dir, "./kraken-data/origin")
        (entry,) = self.config.backends
        self.assertEqual(entry.namespace, ".*")
        self.assertEqual(entry.name, "fs")
        self.assertEqual(entry.options, {"root": "./kraken-data/backend"})
        self.assertEqual(
            entry.to_raw(),
            {"namespace": ".*", "backend": {"fs": {"root": "./kraken-data/backend"}}},
        )
        self.assertEqual(self.config.metainfo.table(), DEFAULT_PIECE_LENGTHS)
        self.assertEqual(
            dict(self.config.metainfo.piece_lengths),
            {0: MiB // 4, 256 * MiB: MiB // 2, 2**30: MiB, 16 * 2**30: 8 * MiB},
        )
        self.assertEqual((self.config.cleanup.tti, self.config.cleanup.ttl), (21600.0, 0.0))

    def test_origin_specifics(self) -> None:
        """Origins do not limit peer bandwidth; replicas write back 30 min apart."""
        self.assertFalse(self.config.scheduler.bandwidth.enabled)
        self.assertEqual(self.config.scheduler.bandwidth.egress, 200 * MiB)
        self.assertEqual(self.config.replication.write_back_stagger, 1800.0)
        self.assertEqual(self.config.replication.upload_chunk_size, 32 * MiB)
        self.assertEqual(self.config.backend_fetch.error_ttl, 15.0)
        self.assertEqual(self.config.backend_fetch.size_limit, 0)
        self.assertEqual(self.config.writeback.retry_interval, 30.0)


class TrackerDefaultsTests(SynchronousTestCase):
    """The tracker's defaults."""

    def test_defaults(self) -> None:
        """15003; interval 3 s, peers kept 5 h, 50 handed out; origins at 15002; cache 5 min/1 s."""
        config = load_config("tracker", None)
        self.assertEqual(config.server.listen, "tcp:15003:interface=127.0.0.1")
        self.assertEqual(config.announce_interval, 3.0)
        self.assertEqual(config.peer_ttl, 5 * 3600.0)
        self.assertEqual(config.handout_limit, 50)
        self.assertEqual(config.peer_store.kind, "memory")
        self.assertEqual(config.peer_store.redis.address, "127.0.0.1:6379")
        self.assertEqual(config.peer_store.redis.database, 0)
        self.assertIsNone(config.peer_store.redis.password_file)
        self.assertEqual(config.origin.hosts, static("127.0.0.1:15002"))
        self.assertEqual(config.origin.healthcheck.fails, 3)
        self.assertEqual(
            (config.metainfo_cache.ok_ttl, config.metainfo_cache.other_ttl), (300.0, 1.0)
        )


class BuildIndexDefaultsTests(SynchronousTestCase):
    """The build-index's defaults."""

    def test_defaults(self) -> None:
        """15004; itself as the cluster, origins at 15002, Docker tags, no remotes."""
        config = load_config("build-index", None)
        self.assertEqual(config.server.listen, "tcp:15004:interface=127.0.0.1")
        self.assertEqual(config.server.advertised(), "127.0.0.1:15004")
        self.assertEqual(config.cluster.hosts, static("127.0.0.1:15004"))
        self.assertEqual(config.origin.hosts, static("127.0.0.1:15002"))
        self.assertEqual(dict(config.remotes), {})
        self.assertEqual([(r.namespace, r.type) for r in config.tag_types], [(".*", "docker")])
        self.assertEqual(config.data_dir, "./kraken-data/build-index")
        self.assertEqual(config.backends[0].options, {"root": "./kraken-data/backend"})
        self.assertEqual(config.duplicate_put_stagger, 1200.0)
        self.assertTrue(config.write_through)


class ProxyDefaultsTests(SynchronousTestCase):
    """The proxy's defaults."""

    def test_defaults(self) -> None:
        """15000; origins at 15002 and build-indexes at 15004; prefetch up to 50 GiB."""
        config = load_config("proxy", None)
        self.assertEqual(config.server.listen, "tcp:15000:interface=127.0.0.1")
        self.assertEqual(config.origin.hosts, static("127.0.0.1:15002"))
        self.assertEqual(config.origin.upload_chunk_size, 32 * MiB)
        self.assertEqual(config.build_index.hosts, static("127.0.0.1:15004"))
        self.assertEqual(config.prefetch.max_blob_size, 50 * 2**30)
        self.assertEqual(config.data_dir, "./kraken-data/proxy")


class HerdDefaultsTests(SynchronousTestCase):
    """The herd composes the five daemons' defaults."""

    def test_members_are_the_daemon_defaults(self) -> None:
        """Each member equals that daemon loaded alone with no file."""
        herd = load_config("herd", None)
        self.assertEqual(herd.data_dir, "./kraken-data")
        self.assertEqual(herd.agent, load_config("agent", None))
        self.assertEqual(herd.origin, load_config("origin", None))
        self.assertEqual(herd.tracker, load_config("tracker", None))
        self.assertEqual(herd.build_index, load_config("build-index", None))
        self.assertEqual(herd.proxy, load_config("proxy", None))

    def test_one_data_dir(self) -> None:
        """The herd's data_dir moves every member's data and the shared backend."""
        herd = parse_config("herd", {"data_dir": "/srv/kraken/", "origin": {"data_dir": "/o"}})
        self.assertEqual(herd.agent.data_dir, "/srv/kraken/agent")
        self.assertEqual(herd.build_index.data_dir, "/srv/kraken/build-index")
        self.assertEqual(herd.build_index.backends[0].options, {"root": "/srv/kraken/backend"})
        self.assertEqual(herd.origin.data_dir, "/o")
        self.assertEqual(herd.origin.backends[0].options, {"root": "/backend"})

    def test_distinct_ports(self) -> None:
        """No two listeners of the herd share a port."""
        herd = load_config("herd", None)
        listens = [
            herd.agent.registry.listen,
            herd.agent.peer.listen,
            herd.agent.server.listen,
            herd.origin.server.listen,
            herd.origin.peer.listen,
            herd.tracker.server.listen,
            herd.build_index.server.listen,
            herd.proxy.server.listen,
        ]
        ports = [parse_endpoint(listen).tcp_port() for listen in listens]
        self.assertEqual(sorted(ports), [15000, 15001, 15002, 15003, 15004, 16000, 16001, 16002])


class EmptyInputTests(SynchronousTestCase):
    """``None`` and ``{}`` both mean defaults, for every kind."""

    def test_every_kind(self) -> None:
        """parse_config(kind, None) == parse_config(kind, {}) == load_config(kind, None)."""
        for kind in CONFIG_CLASSES:
            self.assertEqual(parse_config(kind, None), load_config(kind, None))
            self.assertEqual(parse_config(kind, {}), load_config(kind, None))

    def test_unknown_kind(self) -> None:
        """An unknown kind is a programming error (ValueError), not a ConfigError."""
        with self.assertRaises(ValueError) as raised:
            load_config("registry", None)
        self.assertIn("'registry'", str(raised.exception))
