"""How YAML given for a section combines with that daemon's defaults."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kraken.config import HostListConfig, load_config, parse_config


class SectionMergeTests(SynchronousTestCase):
    """Sections merge key by key; host lists and lists replace."""

    def test_partial_section_keeps_daemon_defaults(self) -> None:
        """Setting the agent's cleanup TTI keeps its 24 h TTL (not the class's 0)."""
        config = parse_config("agent", {"cleanup": {"tti": "1h"}})
        self.assertEqual((config.cleanup.tti, config.cleanup.ttl), (3600.0, 86400.0))

    def test_nested_override_survives(self) -> None:
        """Setting origin egress keeps the origin's bandwidth limits off."""
        config = parse_config("origin", {"scheduler": {"bandwidth": {"egress": "1GiB/s"}}})
        self.assertFalse(config.scheduler.bandwidth.enabled)
        self.assertEqual(config.scheduler.bandwidth.egress, 2**30)
        self.assertEqual(config.scheduler.bandwidth.ingress, 300 * 2**20)

    def test_null_section_is_defaults(self) -> None:
        """``tracker: null`` gives the daemon's defaults for the section, overrides included."""
        config = parse_config("agent", {"tracker": None, "cleanup": None})
        default = load_config("agent", None)
        self.assertEqual(config.tracker, default.tracker)
        self.assertEqual(config.cleanup.ttl, 86400.0)

    def test_host_list_replaced_whole(self) -> None:
        """Giving dns drops the default static list instead of conflicting with it."""
        config = parse_config("agent", {"tracker": {"hosts": {"dns": "trackers:15003"}}})
        self.assertEqual(config.tracker.hosts, HostListConfig(dns="trackers:15003"))
        self.assertEqual(config.tracker.hashring.max_replica, 3)

    def test_client_section_keeps_default_hosts(self) -> None:
        """Tuning health checks keeps the default origin address."""
        config = parse_config("tracker", {"origin": {"healthcheck": {"fails": 5}}})
        self.assertEqual(config.origin.hosts.static, ("127.0.0.1:15002",))
        self.assertEqual(
            (config.origin.healthcheck.fails, config.origin.healthcheck.passes), (5, 2)
        )

    def test_mapping_replaced_whole(self) -> None:
        """A piece length table replaces the default table."""
        config = parse_config("origin", {"metainfo": {"piece_lengths": {0: "4MiB"}}})
        self.assertEqual(dict(config.metainfo.piece_lengths), {0: 4 * 2**20})
        self.assertEqual(config.metainfo.table().for_size(2**40), 4 * 2**20)

    def test_backends_follow_data_dir(self) -> None:
        """The default fs backend sits beside data_dir, unless backends are given."""
        moved = parse_config("origin", {"data_dir": "/var/lib/kraken/origin"})
        self.assertEqual(moved.backends[0].options, {"root": "/var/lib/kraken/backend"})
        given = parse_config(
            "origin",
            {"data_dir": "/d/origin", "backends": [{"namespace": "x", "backend": {"fs": {}}}]},
        )
        # An fs backend given without a root has the fs backend's own default, not data_dir's.
        self.assertEqual(
            [entry.to_raw() for entry in given.backends],
            [{"namespace": "x", "backend": {"fs": {"root": "./kraken-data/backend"}}}],
        )

    def test_values_are_read_only(self) -> None:
        """Mappings in a config cannot be changed by the daemons that share it."""
        config = load_config("origin", None)
        with self.assertRaises(TypeError):
            config.metainfo.piece_lengths[5] = 5  # type: ignore[index]


class AdvertiseTests(SynchronousTestCase):
    """Where other hosts are told to connect."""

    def test_explicit(self) -> None:
        """An explicit advertise wins over the listen interface."""
        config = parse_config("agent", {"peer": {"listen": "tcp:16001", "advertise": "10.1.2.3:9"}})
        self.assertEqual(config.peer.advertised(), "10.1.2.3:9")

    def test_from_listen(self) -> None:
        """Without advertise, the listen interface and port are used; IPv6 is bracketed."""
        config = parse_config("origin", {"server": {"listen": "tcp6:15002:interface=\\:\\:1"}})
        self.assertEqual(config.server.advertised(), "[::1]:15002")
